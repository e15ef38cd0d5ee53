//! The simulated device's operations, all blocking: flash (erase, program, verify, record), boot
//! with MCUboot-like test mode and revert, confirm, and read back of what is installed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::faults::{self, Faults, Fired};
use super::model::{ERASED, FlashMemory};
use super::state::{
    COUNTERS_FILE, Counters, DeviceState, INSTALLED_FILE, Slot, SlotImage, read_json,
    write_json_atomic,
};
use crate::image::Source;
use crate::progress::{Phase, Reporter};
use crate::{FlashError, FlashOutcome, FlashRequest, Installed, SimulatedConfig, chip};

/// Bytes of the image and of the flash compared at a time (verify, and the search of [`Device::weaken_cell`]).
const CHUNK: usize = 64 * 1024;

/// What a boot did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootOutcome {
    /// The active slot booted normally.
    Booted(Slot),
    /// A newly flashed image booted in test mode (A/B); it reverts at the next boot unless confirmed.
    TestBoot(Slot),
    /// An unconfirmed test image was abandoned; the previous slot booted (`to` may hold no image).
    Reverted {
        /// The abandoned slot.
        from: Slot,
        /// The slot that boots now.
        to: Slot,
    },
    /// No valid image: nothing runs.
    NoImage,
}

/// The device behind the flasher; one operation at a time (callers hold its mutex).
#[derive(Debug)]
pub(crate) struct Device {
    pub(crate) cfg: SimulatedConfig,
    pub(crate) chip: String,
    pub(crate) mem: FlashMemory,
    pub(crate) runtime_faults: Arc<Mutex<Faults>>,
}

impl Device {
    fn path(&self, name: &str) -> PathBuf {
        self.cfg.dir.join(name)
    }

    pub(crate) fn state(&self) -> Result<DeviceState, FlashError> {
        read_json(&self.path(INSTALLED_FILE))
    }

    fn save_state(&self, s: &DeviceState) -> Result<(), FlashError> {
        write_json_atomic(&self.path(INSTALLED_FILE), s)
    }

    pub(crate) fn counters(&self) -> Result<Counters, FlashError> {
        read_json(&self.path(COUNTERS_FILE))
    }

    fn update_counters(&self, f: impl FnOnce(&mut Counters)) -> Result<(), FlashError> {
        let mut c = self.counters()?;
        f(&mut c);
        write_json_atomic(&self.path(COUNTERS_FILE), &c)
    }

    /// Bytes per slot: the whole flash, or half of it in A/B mode.
    pub(crate) fn slot_size(&self) -> u64 {
        if self.cfg.ab {
            self.cfg.size / 2
        } else {
            self.cfg.size
        }
    }

    /// Offset in `flash.bin` of image address `addr` written into `slot`.
    fn offset(&self, slot: Slot, addr: u64) -> u64 {
        let base = addr - self.cfg.origin;
        match slot {
            Slot::A => base,
            Slot::B => base + self.slot_size(),
        }
    }

    fn effective_faults(&self) -> Result<Faults, FlashError> {
        let file = faults::read_file(&self.cfg.dir)?;
        let runtime = self.lock_runtime()?.clone();
        Ok(Faults::merged(&[&file, &runtime, &self.cfg.faults]))
    }

    fn lock_runtime(&self) -> Result<std::sync::MutexGuard<'_, Faults>, FlashError> {
        self.runtime_faults
            .lock()
            .map_err(|_| FlashError::Internal {
                detail: "fault state lock poisoned".into(),
            })
    }

    /// Clear fired one-shot faults from every source that set them.
    fn consume(&mut self, fired: Fired) -> Result<(), FlashError> {
        if !fired.any() {
            return Ok(());
        }
        self.cfg.faults.clear_fired(fired);
        self.lock_runtime()?.clear_fired(fired);
        let mut file = faults::read_file(&self.cfg.dir)?;
        let before = file.clone();
        file.clear_fired(fired);
        if file != before {
            faults::write_file(&self.cfg.dir, &file)?;
        }
        Ok(())
    }

    fn check_bounds(&self, img: &Source) -> Result<(), FlashError> {
        let (lo, hi) = (self.cfg.origin, self.cfg.origin + self.slot_size());
        for (address, len) in img.segments() {
            if address < lo || address.saturating_add(len) > hi {
                return Err(FlashError::TooLarge {
                    detail: format!(
                        "{len} bytes at {address:#x} fall outside the {} flash {lo:#x}..{hi:#x}",
                        if self.cfg.ab { "slot of the" } else { "device" },
                    ),
                });
            }
        }
        Ok(())
    }

    pub(crate) fn flash(
        &mut self,
        req: &FlashRequest,
        reporter: &mut Reporter,
        cancel: &CancellationToken,
    ) -> Result<FlashOutcome, FlashError> {
        let faults = self.effective_faults()?;
        if faults.busy {
            return Err(FlashError::ProbeBusy {
                what: self.cfg.dir.display().to_string(),
                detail: "simulated device is busy (fault injected)".into(),
            });
        }
        chip::check_chip("simulated", &self.chip, &req.chip)?;
        let img = Source::open(&req.image, req.format, req.base_address)?;
        self.check_bounds(&img)?;
        if cancel.is_cancelled() {
            return Err(FlashError::Cancelled);
        }
        let mut state = self.state()?;
        let target = if self.cfg.ab {
            state.active.other()
        } else {
            Slot::A
        };
        // From here on the device is written: record the attempt, then invalidate the target slot.
        self.update_counters(|c| *c.started.entry(req.reference.clone()).or_default() += 1)?;
        state.set_slot(target, None);
        if state.pending == Some(target) {
            state.pending = None;
        }
        state.writing = Some(req.reference.clone());
        self.save_state(&state)?;

        let mut fired = Fired::default();
        let result = self.write_and_verify(&img, target, &faults, reporter, &mut fired);
        self.consume(fired)?;
        let sha256 = result?;

        state.set_slot(
            target,
            Some(SlotImage {
                reference: req.reference.clone(),
                version: req.version.clone(),
                sha256,
                regions: img.segments(),
            }),
        );
        state.writing = None;
        if self.cfg.ab {
            state.pending = Some(target);
        }
        self.save_state(&state)?;
        self.update_counters(|c| *c.completed.entry(req.reference.clone()).or_default() += 1)?;
        // Reset and run: an A/B image now boots in test mode.
        self.boot()?;
        Ok(FlashOutcome {
            bytes: img.len(),
            unchanged: false,
        })
    }

    /// Erase, program and verify `img` into `target`; returns the image's SHA-256.
    fn write_and_verify(
        &self,
        img: &Source,
        target: Slot,
        faults: &Faults,
        reporter: &mut Reporter,
        fired: &mut Fired,
    ) -> Result<String, FlashError> {
        let sector = self.mem.sector_size();
        let mut sectors: Vec<u64> = img
            .segments()
            .into_iter()
            .flat_map(|(address, len)| {
                let first = self.offset(target, address) / sector;
                let last = (self.offset(target, address + len) - 1) / sector;
                first..=last
            })
            .collect();
        sectors.dedup();
        let mut tally = Counters::default();
        let outcome =
            self.erase_and_program(img, target, &sectors, faults, reporter, fired, &mut tally);
        let sync = self.mem.sync();
        self.update_counters(|c| {
            c.erases += tally.erases;
            c.page_programs += tally.page_programs;
            c.bytes_programmed += tally.bytes_programmed;
            c.corrupt_programs += tally.corrupt_programs;
            c.power_cuts += tally.power_cuts;
        })?;
        outcome?;
        sync?;
        match self.verify(img, target, reporter) {
            Ok(sha) => Ok(sha),
            Err(e) => {
                self.update_counters(|c| c.verify_failures += 1)?;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn erase_and_program(
        &self,
        img: &Source,
        target: Slot,
        sectors: &[u64],
        faults: &Faults,
        reporter: &mut Reporter,
        fired: &mut Fired,
        tally: &mut Counters,
    ) -> Result<(), FlashError> {
        for (i, s) in sectors.iter().enumerate() {
            reporter.report(Phase::Erasing, i as u64, sectors.len() as u64);
            if !faults.skip_erase {
                self.mem.erase_sector(*s)?;
            }
            tally.erases += 1;
        }
        reporter.report(Phase::Erasing, 1, 1);
        let total = img.len();
        let page = self.mem.page_size();
        let mut done: u64 = 0;
        let mut buf = vec![0u8; usize::try_from(page).unwrap_or(usize::MAX)];
        for (seg, (address, len)) in img.segments().into_iter().enumerate() {
            let mut pos = 0u64;
            while pos < len {
                let off = self.offset(target, address) + pos;
                let room = page - off % page;
                let chunk = &mut buf[..usize::try_from(room.min(len - pos)).unwrap_or(usize::MAX)];
                img.read(seg, pos, chunk)?;
                let chunk = &*chunk;
                let end = done + chunk.len() as u64;
                if let Some(n) = faults.fail_after_bytes.filter(|n| *n < end) {
                    fired.fail_after_bytes = true;
                    return Err(FlashError::FlashFailed {
                        detail: format!(
                            "program of page at {off:#x} failed after {n} bytes (fault injected)"
                        ),
                    });
                }
                let cut = faults.power_cut_at_byte.filter(|n| *n < end);
                let take = cut.map_or(chunk.len(), |n| n.saturating_sub(done) as usize);
                if take > 0 {
                    let r = self.mem.program(off, &chunk[..take])?;
                    tally.page_programs += 1;
                    tally.bytes_programmed += take as u64;
                    tally.corrupt_programs += u64::from(r.corrupt);
                }
                if let Some(n) = cut {
                    fired.power_cut = true;
                    tally.power_cuts += 1;
                    return Err(FlashError::FlashFailed {
                        detail: format!("power lost after {n} of {total} bytes (fault injected)"),
                    });
                }
                done = end;
                pos += chunk.len() as u64;
                reporter.report(Phase::Programming, done, total);
            }
        }
        if faults.verify_error {
            self.weaken_cell(img, target)?;
        }
        Ok(())
    }

    /// A programmed 0 bit that did not take: the first byte with a 0 bit gets it back to 1.
    fn weaken_cell(&self, img: &Source, target: Slot) -> Result<(), FlashError> {
        let mut first = None;
        img.for_each_chunk(CHUNK, |address, chunk| {
            first = chunk
                .iter()
                .position(|b| *b != ERASED)
                .map(|i| (address + i as u64, chunk[i]));
            Ok(first.is_none())
        })?;
        match first {
            Some((address, b)) => {
                let bit = (!b).trailing_zeros();
                self.mem.poke(self.offset(target, address), b | (1 << bit))
            }
            None => Ok(()),
        }
    }

    /// Compare flash with the image; the SHA-256 of what was read back.
    fn verify(
        &self,
        img: &Source,
        target: Slot,
        reporter: &mut Reporter,
    ) -> Result<String, FlashError> {
        let mut hasher = Sha256::new();
        let total = img.len();
        let mut done = 0;
        img.for_each_chunk(CHUNK, |address, want| {
            let got = self
                .mem
                .read(self.offset(target, address), want.len() as u64)?;
            if let Some(i) = got.iter().zip(want).position(|(g, w)| g != w) {
                return Err(FlashError::VerifyFailed {
                    detail: format!(
                        "address {:#x}: read {:#04x}, expected {:#04x}",
                        address + i as u64,
                        got[i],
                        want[i]
                    ),
                });
            }
            hasher.update(&got);
            done += got.len() as u64;
            reporter.report(Phase::Verifying, done, total);
            Ok(true)
        })?;
        Ok(hex::encode(hasher.finalize()))
    }

    /// Read back the regions of `image` from `slot` and hash them.
    fn readback_sha(&self, image: &SlotImage, slot: Slot) -> Result<Option<String>, FlashError> {
        let mut hasher = Sha256::new();
        for (addr, len) in &image.regions {
            if *addr < self.cfg.origin || addr + len > self.cfg.origin + self.slot_size() {
                return Ok(None);
            }
            let mut pos = 0u64;
            while pos < *len {
                let n = (*len - pos).min(CHUNK as u64);
                hasher.update(self.mem.read(self.offset(slot, *addr) + pos, n)?);
                pos += n;
            }
        }
        Ok(Some(hex::encode(hasher.finalize())))
    }

    /// What boots now, if its content is intact (re-hashed from `flash.bin`).
    pub(crate) fn installed(&self) -> Result<Option<Installed>, FlashError> {
        let state = self.state()?;
        let Some(img) = state.slot(state.active) else {
            return Ok(None);
        };
        if self.readback_sha(img, state.active)?.as_deref() != Some(img.sha256.as_str()) {
            tracing::warn!(slot = state.active.as_str(), reference = %img.reference, "flash content does not match the recorded image");
            return Ok(None);
        }
        Ok(Some(Installed {
            reference: img.reference.clone(),
            version: img.version.clone(),
            sha256: img.sha256.clone(),
            slot: self.cfg.ab.then(|| state.active.as_str().to_owned()),
            confirmed: !state.testing,
        }))
    }

    /// Reset the device: try a pending image in test mode, or revert an unconfirmed one.
    pub(crate) fn boot(&mut self) -> Result<BootOutcome, FlashError> {
        let mut state = self.state()?;
        let outcome = if let Some(slot) = state.pending.take() {
            state.active = slot;
            state.testing = true;
            BootOutcome::TestBoot(slot)
        } else if state.testing {
            let from = state.active;
            state.set_slot(from, None);
            state.active = from.other();
            state.testing = false;
            BootOutcome::Reverted {
                from,
                to: state.active,
            }
        } else if state.slot(state.active).is_some() {
            BootOutcome::Booted(state.active)
        } else {
            BootOutcome::NoImage
        };
        self.save_state(&state)?;
        self.update_counters(|c| {
            c.boots += 1;
            c.reverts += u64::from(matches!(outcome, BootOutcome::Reverted { .. }));
        })?;
        Ok(outcome)
    }

    /// `len` bytes at `address` of the slot that boots: what a running firmware would read from its own flash.
    /// Outside that slot: `too-large`.
    pub(crate) fn read_memory(&self, address: u64, len: u64) -> Result<Vec<u8>, FlashError> {
        let (lo, hi) = (self.cfg.origin, self.cfg.origin + self.slot_size());
        if len > crate::MAX_MEMORY_READ || address < lo || address.saturating_add(len) > hi {
            return Err(FlashError::TooLarge {
                detail: format!(
                    "a read of {len} bytes at {address:#x} falls outside the flash {lo:#x}..{hi:#x} (or above {} bytes)",
                    crate::MAX_MEMORY_READ
                ),
            });
        }
        let active = self.state()?.active;
        self.mem.read(self.offset(active, address), len)
    }

    /// Confirm the running test-mode image; false when nothing was in test mode.
    pub(crate) fn confirm(&mut self) -> Result<bool, FlashError> {
        let mut state = self.state()?;
        if !state.testing {
            return Ok(false);
        }
        state.testing = false;
        self.save_state(&state)?;
        Ok(true)
    }
}
