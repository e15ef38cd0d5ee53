//! The twinflash cloud controller.
