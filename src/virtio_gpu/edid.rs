//! A generated EDID 1.4 base block describing one scanout's preferred mode,
//! for GET_EDID.

/// Size of an EDID base block.
pub const EDID_BLOCK_SIZE: usize = 128;

const HBLANK: u32 = 160;
const HFRONT: u32 = 48;
const HSYNC: u32 = 32;
const VBLANK: u32 = 30;
const VFRONT: u32 = 3;
const VSYNC: u32 = 5;
const REFRESH_HZ: u32 = 60;

/// Builds a valid EDID block whose preferred (first detailed) timing is
/// `width` x `height` at 60 Hz. Sizes beyond what EDID can encode (4095) are
/// clamped; a zero size becomes 1.
pub fn generate(width: u32, height: u32) -> [u8; EDID_BLOCK_SIZE] {
    let w = width.clamp(1, 4095);
    let h = height.clamp(1, 4095);
    let mut e = [0u8; EDID_BLOCK_SIZE];
    e[0..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    // Manufacturer "VUM": three 5-bit letters, big endian.
    let id: u16 =
        ((u16::from(b'V' - b'@')) << 10) | ((u16::from(b'U' - b'@')) << 5) | u16::from(b'M' - b'@');
    e[8..10].copy_from_slice(&id.to_be_bytes());
    e[10..12].copy_from_slice(&0x0610u16.to_le_bytes()); // product code
    e[16] = 1; // week of manufacture
    e[17] = 36; // 2026 - 1990
    e[18] = 1; // EDID version 1.4
    e[19] = 4;
    e[20] = 0x80; // digital input
                  // Physical size in cm at ~96 dpi.
    let w_mm = w * 254 / 960;
    let h_mm = h * 254 / 960;
    e[21] = u8::try_from((w_mm / 10).min(255)).unwrap_or(255);
    e[22] = u8::try_from((h_mm / 10).min(255)).unwrap_or(255);
    e[23] = 120; // gamma 2.2
    e[24] = 0x06; // sRGB default colour space, preferred timing is native
    e[25..35].copy_from_slice(&[0xee, 0x91, 0xa3, 0x54, 0x4c, 0x99, 0x26, 0x0f, 0x50, 0x54]);
    for i in 0..8 {
        e[38 + 2 * i] = 0x01;
        e[39 + 2 * i] = 0x01;
    }
    detailed_timing(&mut e[54..72], w, h, w_mm, h_mm);
    text_descriptor(&mut e[72..90], 0xfc, b"vhost-user-ma");
    text_descriptor(&mut e[90..108], 0xff, b"0001");
    e[111] = 0x10; // dummy descriptor
    e[126] = 0; // no extension blocks
    let sum = e[..127].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    e[127] = 0u8.wrapping_sub(sum);
    e
}

fn lo(v: u32) -> u8 {
    (v & 0xff) as u8
}

fn detailed_timing(d: &mut [u8], w: u32, h: u32, w_mm: u32, h_mm: u32) {
    let total = u64::from(w + HBLANK) * u64::from(h + VBLANK) * u64::from(REFRESH_HZ);
    let clock_10khz = u16::try_from((total / 10_000).clamp(1, 65535)).unwrap_or(u16::MAX);
    d[0..2].copy_from_slice(&clock_10khz.to_le_bytes());
    d[2] = lo(w);
    d[3] = lo(HBLANK);
    d[4] = lo(((w >> 8) << 4) | (HBLANK >> 8));
    d[5] = lo(h);
    d[6] = lo(VBLANK);
    d[7] = lo(((h >> 8) << 4) | (VBLANK >> 8));
    d[8] = lo(HFRONT);
    d[9] = lo(HSYNC);
    d[10] = lo(((VFRONT & 0xf) << 4) | (VSYNC & 0xf));
    d[11] = lo(((HFRONT >> 8) << 6) | ((HSYNC >> 8) << 4) | ((VFRONT >> 4) << 2) | (VSYNC >> 4));
    let w_mm = w_mm.min(4095);
    let h_mm = h_mm.min(4095);
    d[12] = lo(w_mm);
    d[13] = lo(h_mm);
    d[14] = lo(((w_mm >> 8) << 4) | (h_mm >> 8));
    d[17] = 0x1e; // digital separate sync, both polarities positive
}

fn text_descriptor(d: &mut [u8], tag: u8, text: &[u8]) {
    d[3] = tag;
    let body = &mut d[5..18];
    body.fill(0x20);
    let n = text.len().min(13);
    body[..n].copy_from_slice(&text[..n]);
    if n < 13 {
        body[n] = 0x0a;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(e: &[u8; 128]) -> (u32, u32) {
        let d = &e[54..72];
        let w = u32::from(d[2]) | (u32::from(d[4] >> 4) << 8);
        let h = u32::from(d[5]) | (u32::from(d[7] >> 4) << 8);
        (w, h)
    }

    #[test]
    fn valid_block_with_preferred_mode() {
        for (w, h) in [(1280, 800), (1024, 768), (3840, 2160), (0, 0), (100_000, 9)] {
            let e = generate(w, h);
            assert_eq!(&e[0..8], &[0, 255, 255, 255, 255, 255, 255, 0]);
            assert_eq!(e.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            assert_eq!(active(&e), (w.clamp(1, 4095), h.clamp(1, 4095)));
            assert_ne!(u16::from_le_bytes([e[54], e[55]]), 0);
        }
    }
}
