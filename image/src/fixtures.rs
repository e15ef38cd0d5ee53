//! Small firmware files built in memory, for tests of this crate and of the crates that use it
//! (feature `test-support`, enabled from dev-dependencies only: release binaries do not carry it).
//!
//! They produce the same layouts a toolchain would (an ELF32 with PT_LOAD segments, Intel HEX, UF2 blocks).

/// A little-endian ARM ELF32 executable whose PT_LOAD segments hold `segments` at their physical
/// addresses (virtual address = physical address + `vaddr_offset`, to prove the loader uses physical ones).
pub fn elf32(segments: &[(u32, &[u8])], vaddr_offset: u32) -> Vec<u8> {
    const EHDR: usize = 52;
    const PHDR: usize = 32;
    let phnum = segments.len() + 1; // plus one non-load segment (PT_NOTE) that must be ignored
    let mut data_off = EHDR + PHDR * phnum;
    let mut out = vec![0u8; data_off];
    out[0..4].copy_from_slice(b"\x7fELF");
    out[4] = 1; // ELFCLASS32
    out[5] = 1; // little endian
    out[6] = 1; // EV_CURRENT
    let put16 =
        |b: &mut Vec<u8>, at: usize, v: u16| b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put32 =
        |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put16(&mut out, 16, 2); // ET_EXEC
    put16(&mut out, 18, 40); // EM_ARM
    put32(&mut out, 20, 1);
    put32(&mut out, 24, segments.first().map(|s| s.0).unwrap_or(0)); // entry
    put32(&mut out, 28, EHDR as u32); // phoff
    put16(&mut out, 40, EHDR as u16); // ehsize
    put16(&mut out, 42, PHDR as u16);
    put16(&mut out, 44, phnum as u16);
    put16(&mut out, 46, 40); // shentsize
    let mut payload = Vec::new();
    for (i, (addr, bytes)) in segments.iter().enumerate() {
        let ph = EHDR + PHDR * i;
        put32(&mut out, ph, 1); // PT_LOAD
        put32(&mut out, ph + 4, data_off as u32);
        put32(&mut out, ph + 8, addr.wrapping_add(vaddr_offset));
        put32(&mut out, ph + 12, *addr);
        put32(&mut out, ph + 16, bytes.len() as u32);
        put32(&mut out, ph + 20, bytes.len() as u32 + 64); // memsz > filesz (a .bss tail)
        put32(&mut out, ph + 24, 5);
        put32(&mut out, ph + 28, 4);
        payload.extend_from_slice(bytes);
        data_off += bytes.len();
    }
    let note = EHDR + PHDR * segments.len();
    put32(&mut out, note, 4); // PT_NOTE
    put32(&mut out, note + 4, EHDR as u32);
    put32(&mut out, note + 16, 4);
    out.extend_from_slice(&payload);

    // Section headers as a linker writes them (probe-rs loads segments that contain sections):
    // null, one `.textN` per segment, `.shstrtab`.
    let mut strtab = b"\0.shstrtab\0".to_vec();
    let mut names = Vec::new();
    for i in 0..segments.len() {
        names.push(strtab.len() as u32);
        strtab.extend_from_slice(format!(".text{i}\0").as_bytes());
    }
    let strtab_off = out.len();
    out.extend_from_slice(&strtab);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    let shoff = out.len();
    let shnum = segments.len() + 2;
    out.resize(shoff + 40 * shnum, 0);
    let mut off = EHDR + PHDR * phnum;
    for (i, (addr, bytes)) in segments.iter().enumerate() {
        let sh = shoff + 40 * (i + 1);
        put32(&mut out, sh, names[i]);
        put32(&mut out, sh + 4, 1); // SHT_PROGBITS
        put32(&mut out, sh + 8, 0x6); // SHF_ALLOC | SHF_EXECINSTR
        put32(&mut out, sh + 12, addr.wrapping_add(vaddr_offset));
        put32(&mut out, sh + 16, off as u32);
        put32(&mut out, sh + 20, bytes.len() as u32);
        put32(&mut out, sh + 32, 4);
        off += bytes.len();
    }
    let sh = shoff + 40 * (segments.len() + 1);
    put32(&mut out, sh, 1); // ".shstrtab"
    put32(&mut out, sh + 4, 3); // SHT_STRTAB
    put32(&mut out, sh + 16, strtab_off as u32);
    put32(&mut out, sh + 20, strtab.len() as u32);
    put32(&mut out, sh + 32, 1);
    put32(&mut out, 32, shoff as u32); // e_shoff
    put16(&mut out, 48, shnum as u16); // e_shnum
    put16(&mut out, 50, (shnum - 1) as u16); // e_shstrndx
    out
}

/// Intel HEX text for `data` at `address` (extended linear address records as needed).
pub fn ihex(address: u32, data: &[u8]) -> String {
    let mut records = Vec::new();
    let mut upper = None;
    for (i, chunk) in data.chunks(16).enumerate() {
        let addr = address.wrapping_add((i * 16) as u32);
        let hi = (addr >> 16) as u16;
        if upper != Some(hi) {
            records.push(ihex::Record::ExtendedLinearAddress(hi));
            upper = Some(hi);
        }
        records.push(ihex::Record::Data {
            offset: (addr & 0xFFFF) as u16,
            value: chunk.to_vec(),
        });
    }
    records.push(ihex::Record::EndOfFile);
    // Records built here are always valid (<= 255 data bytes), so the writer cannot fail.
    ihex::create_object_file_representation(&records).unwrap_or_default()
}

/// UF2 blocks carrying `data` at `address`, `payload` bytes per block (256 is usual, at most 476).
pub fn uf2(address: u32, data: &[u8], payload: usize) -> Vec<u8> {
    const BLOCK: usize = 512;
    let payload = payload.clamp(1, 476);
    let chunks: Vec<&[u8]> = data.chunks(payload).collect();
    let mut out = Vec::with_capacity(chunks.len() * BLOCK);
    for (n, chunk) in chunks.iter().enumerate() {
        let mut block = [0u8; BLOCK];
        let put = |b: &mut [u8; BLOCK], at: usize, v: u32| {
            b[at..at + 4].copy_from_slice(&v.to_le_bytes())
        };
        put(&mut block, 0, 0x0A32_4655);
        put(&mut block, 4, 0x9E5D_5157);
        put(&mut block, 8, 0x2000); // family id present
        put(&mut block, 12, address.wrapping_add((n * payload) as u32));
        put(&mut block, 16, chunk.len() as u32);
        put(&mut block, 20, n as u32);
        put(&mut block, 24, chunks.len() as u32);
        put(&mut block, 28, 0xADA5_2840); // nRF52840 family id
        block[32..32 + chunk.len()].copy_from_slice(chunk);
        put(&mut block, BLOCK - 4, 0x0AB1_6F30);
        out.extend_from_slice(&block);
    }
    out
}

/// Deterministic pseudo-random bytes (a firmware stand-in that differs per `seed`).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9E37_79B9 ^ u32::from(seed).wrapping_mul(0x0101_0101);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        })
        .collect()
}
