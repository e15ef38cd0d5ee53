//! The target's memory map (`qXfer:memory-map:read`, GDB manual "Memory Map Format"): which ranges are flash, and
//! their erase block size. Only the `<memory type start length>` elements and their `blocksize` property are read;
//! the format has no other content (its DTD), so a small reader does instead of an XML crate in the edge binary.

/// One flash range of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlashRegion {
    /// First address.
    pub start: u64,
    /// Size in bytes.
    pub length: u64,
    /// Erase granularity in bytes.
    pub blocksize: u64,
}

impl FlashRegion {
    /// One past the last address.
    pub(crate) fn end(&self) -> u64 {
        self.start.saturating_add(self.length)
    }
}

/// The flash regions of a memory map document, or why it cannot be read.
pub(crate) fn flash_regions(xml: &str) -> Result<Vec<FlashRegion>, String> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(at) = rest.find("<memory ") {
        let after = &rest[at + "<memory ".len()..];
        let tag_end = after
            .find('>')
            .ok_or_else(|| "unterminated <memory> element".to_owned())?;
        let tag = &after[..tag_end];
        let self_closing = tag.ends_with('/');
        let body = if self_closing {
            ""
        } else {
            let close = after
                .find("</memory>")
                .ok_or_else(|| "<memory> element without </memory>".to_owned())?;
            &after[tag_end + 1..close]
        };
        rest = &after[tag_end + 1..];
        if attribute(tag, "type") != Some("flash") {
            continue;
        }
        let number = |what: &str, text: Option<&str>| {
            text.and_then(parse_number)
                .ok_or_else(|| format!("flash region without a valid {what}: <memory {tag}>"))
        };
        let start = number("start", attribute(tag, "start"))?;
        let length = number("length", attribute(tag, "length"))?;
        let blocksize = number("blocksize", property(body, "blocksize"))?;
        if length == 0 || blocksize == 0 {
            return Err(format!(
                "flash region of size 0 or block size 0: <memory {tag}>"
            ));
        }
        out.push(FlashRegion {
            start,
            length,
            blocksize,
        });
    }
    Ok(out)
}

/// The value of `name="..."` (or `'...'`) in a tag's attributes.
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = tag;
    loop {
        let at = rest.find(name)?;
        let before_ok = at == 0 || rest[..at].ends_with(char::is_whitespace);
        let after = rest[at + name.len()..].trim_start();
        if before_ok && let Some(v) = after.strip_prefix('=') {
            let v = v.trim_start();
            let quote = v.chars().next()?;
            if quote == '"' || quote == '\'' {
                let v = &v[1..];
                return v.find(quote).map(|end| &v[..end]);
            }
        }
        rest = &rest[at + name.len()..];
    }
}

/// The text of `<property name="NAME">TEXT</property>`.
fn property<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = body;
    while let Some(at) = rest.find("<property") {
        let after = &rest[at + "<property".len()..];
        let tag_end = after.find('>')?;
        let text = &after[tag_end + 1..];
        let close = text.find("</property>")?;
        if attribute(&after[..tag_end], "name") == Some(name) {
            return Some(text[..close].trim());
        }
        rest = &text[close..];
    }
    None
}

/// `0x1000` or `4096`.
fn parse_number(text: &str) -> Option<u64> {
    let t = text.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape OpenOCD sends for an STM32F4 (sectors of 16, 64 and 128 KiB), trimmed.
    const OPENOCD_STM32F4: &str = r#"<?xml version="1.0"?>
<!DOCTYPE memory-map PUBLIC "+//IDN gnu.org//DTD GDB Memory Map V1.0//EN" "http://sourceware.org/gdb/gdb-memory-map.dtd">
<memory-map>
<memory type="ram" start="0x0" length="0x8000000"/>
<memory type="flash" start="0x08000000" length="0x10000">
<property name="blocksize">0x4000</property>
</memory>
<memory type="flash" start="0x08010000" length="0x10000">
<property name="blocksize">0x10000</property>
</memory>
<memory type='flash' start='0x08020000' length='917504'>
<property name='blocksize'>131072</property>
</memory>
<memory type="ram" start="0x08100000" length="0xf7f00000"/>
</memory-map>
"#;

    #[test]
    fn reads_flash_regions_and_block_sizes() {
        let regions = flash_regions(OPENOCD_STM32F4).unwrap();
        assert_eq!(
            regions,
            vec![
                FlashRegion {
                    start: 0x0800_0000,
                    length: 0x1_0000,
                    blocksize: 0x4000
                },
                FlashRegion {
                    start: 0x0801_0000,
                    length: 0x1_0000,
                    blocksize: 0x1_0000
                },
                FlashRegion {
                    start: 0x0802_0000,
                    length: 917_504,
                    blocksize: 131_072
                },
            ]
        );
        assert_eq!(regions[2].end(), 0x0810_0000);
    }

    #[test]
    fn malformed_maps_are_refused() {
        assert!(flash_regions(r#"<memory type="flash" start="0x0" length="0x100">"#).is_err());
        assert!(flash_regions(r#"<memory type="flash" start="zz" length="1"></memory>"#).is_err());
        assert!(
            flash_regions(
                r#"<memory type="flash" start="0" length="16"><property name="blocksize">0</property></memory>"#
            )
            .is_err()
        );
        assert_eq!(flash_regions("<memory-map></memory-map>").unwrap(), vec![]);
    }
}
