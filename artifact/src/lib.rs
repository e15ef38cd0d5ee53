//! The twinflash firmware artifact: format, push and a resumable, verified fetcher.
