//! Whether an artifact's chip annotation fits a device's configured chip.
//!
//! Rule: case-insensitive; the artifact's chip must equal the device chip or be a prefix of it
//! (a family name). `nRF52840` and `nRF52840_xxAA` fit a device `nRF52840_xxAA`; the reverse does not.

use crate::FlashError;

/// True when an artifact annotated `artifact_chip` may be flashed onto a `device_chip`.
pub fn chip_fits(device_chip: &str, artifact_chip: &str) -> bool {
    let device = device_chip.trim().to_ascii_lowercase();
    let artifact = artifact_chip.trim().to_ascii_lowercase();
    !artifact.is_empty() && device.starts_with(&artifact)
}

/// [`chip_fits`] as a `Result` carrying a `chip-mismatch` error.
pub fn check_chip(device: &str, device_chip: &str, artifact_chip: &str) -> Result<(), FlashError> {
    if chip_fits(device_chip, artifact_chip) {
        Ok(())
    } else {
        Err(FlashError::ChipMismatch {
            device: device.to_owned(),
            device_chip: device_chip.to_owned(),
            artifact: artifact_chip.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            ("nRF52840_xxAA", "nRF52840_xxAA", true),
            ("nRF52840_xxAA", "nrf52840_XXAA", true),
            ("nRF52840_xxAA", "nRF52840", true),
            ("STM32F411RETx", "STM32F411", true),
            ("nRF52840_xxAA", "nRF52833_xxAA", false),
            ("nRF52840", "nRF52840_xxAA", false),
            ("nRF52840_xxAA", "", false),
            ("nRF52840_xxAA", "   ", false),
            ("esp32c3", "esp32", true),
            ("esp32", "esp32c3", false),
        ];
        for (device, artifact, fits) in cases {
            assert_eq!(chip_fits(device, artifact), fits, "{device} <- {artifact}");
            let res = check_chip("dev", device, artifact);
            assert_eq!(res.is_ok(), fits);
            if let Err(e) = res {
                assert_eq!(e.code().as_str(), "chip-mismatch");
            }
        }
    }
}
