//! The twinflash edge agent.
