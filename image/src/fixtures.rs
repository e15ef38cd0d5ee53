//! Small firmware files built in memory, for tests of this crate and of the crates that use it
//! (feature `test-support`, enabled from dev-dependencies only: release binaries do not carry it).
//!
//! They produce the same layouts a toolchain would (an ELF32 with PT_LOAD segments, Intel HEX, UF2 blocks).

/// A little-endian ARM ELF32 executable whose PT_LOAD segments hold `segments` at their physical
/// addresses (virtual address = physical address + `vaddr_offset`, to prove the loader uses physical ones).
pub fn elf32(segments: &[(u32, &[u8])], vaddr_offset: u32) -> Vec<u8> {
    let phnum = segments.len() + 1; // plus one non-load segment (PT_NOTE) that must be ignored
    let mut data_off = EHDR + PHDR * phnum;
    let mut out = elf32_header(
        data_off,
        phnum as u16,
        segments.first().map(|s| s.0).unwrap_or(0),
    );
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

const EHDR: usize = 52;
const PHDR: usize = 32;

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// `len` zero bytes that start with the header of a little-endian ARM ELF32 executable with `phnum` program headers
/// right after it.
fn elf32_header(len: usize, phnum: u16, entry: u32) -> Vec<u8> {
    let mut out = vec![0u8; len.max(EHDR)];
    out[0..4].copy_from_slice(b"\x7fELF");
    out[4] = 1; // ELFCLASS32
    out[5] = 1; // little endian
    out[6] = 1; // EV_CURRENT
    put16(&mut out, 16, 2); // ET_EXEC
    put16(&mut out, 18, 40); // EM_ARM
    put32(&mut out, 20, 1);
    put32(&mut out, 24, entry);
    put32(&mut out, 28, EHDR as u32); // phoff
    put16(&mut out, 40, EHDR as u16); // ehsize
    put16(&mut out, 42, PHDR as u16);
    put16(&mut out, 44, phnum);
    put16(&mut out, 46, 40); // shentsize
    out
}

/// An ELF32 of `file_len` bytes whose program headers are all PT_LOAD `(p_offset, p_paddr, p_filesz)` as given, and
/// nothing else (no sections). The headers follow the ELF header; the rest of the file is zeros.
pub fn elf32_loads(file_len: usize, loads: &[(u32, u32, u32)]) -> Vec<u8> {
    let mut out = elf32_header(
        file_len.max(EHDR + PHDR * loads.len()),
        loads.len() as u16,
        0,
    );
    for (i, (offset, paddr, filesz)) in loads.iter().enumerate() {
        let ph = EHDR + PHDR * i;
        put32(&mut out, ph, 1); // PT_LOAD
        put32(&mut out, ph + 4, *offset);
        put32(&mut out, ph + 8, *paddr);
        put32(&mut out, ph + 12, *paddr);
        put32(&mut out, ph + 16, *filesz);
        put32(&mut out, ph + 20, *filesz);
        put32(&mut out, ph + 24, 5);
        put32(&mut out, ph + 28, 4);
    }
    out
}

/// The program-header bomb of issue 23: a 4 MiB ELF32 with 65,534 PT_LOAD headers, each `p_offset = 0` and
/// `p_filesz = 4 MiB` (the whole file) at the same address: 256 GiB of segments in a file under any artifact limit.
pub fn elf32_header_bomb() -> Vec<u8> {
    const LEN: u32 = 4 << 20;
    elf32_loads(LEN as usize, &vec![(0, 0x0800_0000, LEN); 65_534])
}

/// Intel HEX text for `data` at `address` (extended linear address records as needed).
pub fn ihex(address: u32, data: &[u8]) -> String {
    ihex_pieces(
        data.chunks(16)
            .enumerate()
            .map(|(i, chunk)| (address.wrapping_add((i * 16) as u32), chunk)),
    )
}

/// Intel HEX text with one data record per `(address, bytes)` piece (at most 255 bytes each), in the order given,
/// extended linear address records as needed, and the end-of-file record.
pub fn ihex_pieces<'a>(pieces: impl IntoIterator<Item = (u32, &'a [u8])>) -> String {
    let mut out = String::new();
    let mut upper = None;
    // Records built here are always valid (<= 255 data bytes), so the writer cannot fail.
    let mut put = |record: ihex::Record| {
        out.push_str(&record.to_record_string().unwrap_or_default());
        out.push('\n');
    };
    for (addr, bytes) in pieces {
        let hi = (addr >> 16) as u16;
        if upper != Some(hi) {
            put(ihex::Record::ExtendedLinearAddress(hi));
            upper = Some(hi);
        }
        put(ihex::Record::Data {
            offset: (addr & 0xFFFF) as u16,
            value: bytes.to_vec(),
        });
    }
    put(ihex::Record::EndOfFile);
    out
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
