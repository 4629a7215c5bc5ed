//! Splits a SUBMIT_3D buffer into native commands, rejecting any buffer
//! whose framing is not exactly right.

use thiserror::Error;
use vm_memory::ByteValued;

use crate::uapi::native::{NativeCmdHdr, MAX_COMMANDS_PER_SUBMIT, NATIVE_ALIGN};

/// Why a buffer's framing is wrong.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FramingError {
    /// The buffer is empty.
    #[error("empty command buffer")]
    Empty,
    /// Fewer bytes left than a header.
    #[error("truncated header at offset {0}")]
    TruncatedHeader(usize),
    /// A `len` below the header size or not a multiple of 8.
    #[error("bad command length {len} at offset {offset}")]
    BadLength {
        /// Offset of the command.
        offset: usize,
        /// Its length field.
        len: u32,
    },
    /// A command that runs past the end of the buffer.
    #[error("command at offset {offset} (length {len}) overruns the buffer")]
    Overrun {
        /// Offset of the command.
        offset: usize,
        /// Its length field.
        len: u32,
    },
    /// A response offset that is not 8-byte aligned.
    #[error("misaligned response offset {0:#x}")]
    MisalignedResponse(u32),
    /// More commands than `MAX_COMMANDS_PER_SUBMIT`.
    #[error("too many commands in one buffer")]
    TooMany,
}

/// Splits `buf` into `(header, body)` pairs.
pub fn parse_commands(buf: &[u8]) -> Result<Vec<(NativeCmdHdr, &[u8])>, FramingError> {
    commands(buf).collect()
}

/// The commands of `buf` in order, each checked as it is reached. After an
/// error nothing more comes. Walking a buffer twice (check everything,
/// then run) costs no allocation.
pub fn commands(buf: &[u8]) -> Commands<'_> {
    Commands {
        buf,
        offset: 0,
        count: 0,
        failed: false,
    }
}

/// The iterator of [`commands`].
#[derive(Debug, Clone)]
pub struct Commands<'a> {
    buf: &'a [u8],
    offset: usize,
    count: u32,
    failed: bool,
}

impl<'a> Commands<'a> {
    fn split(&mut self) -> Result<Option<(NativeCmdHdr, &'a [u8])>, FramingError> {
        if self.buf.is_empty() {
            return Err(FramingError::Empty);
        }
        let offset = self.offset;
        let Some(rest) = self.buf.get(offset..).filter(|r| !r.is_empty()) else {
            return Ok(None);
        };
        let hdr_len = std::mem::size_of::<NativeCmdHdr>();
        let mut hdr = NativeCmdHdr::default();
        hdr.as_mut_slice().copy_from_slice(
            rest.get(..hdr_len)
                .ok_or(FramingError::TruncatedHeader(offset))?,
        );
        let len = hdr.len as usize;
        if len < hdr_len || hdr.len % NATIVE_ALIGN != 0 {
            return Err(FramingError::BadLength {
                offset,
                len: hdr.len,
            });
        }
        if hdr.rsp_off % NATIVE_ALIGN != 0 {
            return Err(FramingError::MisalignedResponse(hdr.rsp_off));
        }
        let body = rest.get(hdr_len..len).ok_or(FramingError::Overrun {
            offset,
            len: hdr.len,
        })?;
        if self.count == MAX_COMMANDS_PER_SUBMIT {
            return Err(FramingError::TooMany);
        }
        self.count += 1;
        self.offset += len;
        Ok(Some((hdr, body)))
    }
}

impl<'a> Iterator for Commands<'a> {
    type Item = Result<(NativeCmdHdr, &'a [u8]), FramingError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let r = self.split();
        self.failed = r.is_err();
        r.transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(cmd: u32, len: u32, seqno: u32) -> Vec<u8> {
        let mut v = NativeCmdHdr {
            cmd,
            len,
            seqno,
            rsp_off: 0,
        }
        .as_slice()
        .to_vec();
        v.resize(len.max(16) as usize, 0);
        v
    }

    #[test]
    fn splits_packed_commands() {
        let mut b = cmd(0, 16, 1);
        b.extend(cmd(0, 24, 2));
        let c = parse_commands(&b).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].0.seqno, 2);
        assert_eq!(c[1].1.len(), 8);
    }

    #[test]
    fn rejects_bad_framing() {
        assert_eq!(parse_commands(&[]), Err(FramingError::Empty));
        assert_eq!(
            parse_commands(&[0u8; 8]),
            Err(FramingError::TruncatedHeader(0))
        );
        let mut b = cmd(0, 16, 1);
        b[4..8].copy_from_slice(&12u32.to_le_bytes());
        assert!(matches!(
            parse_commands(&b),
            Err(FramingError::BadLength { .. })
        ));
        b[4..8].copy_from_slice(&20u32.to_le_bytes());
        assert!(matches!(
            parse_commands(&b),
            Err(FramingError::BadLength { .. })
        ));
        b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse_commands(&b),
            Err(FramingError::BadLength { .. })
        ));
        b[4..8].copy_from_slice(&0xffff_fff8u32.to_le_bytes());
        assert!(matches!(
            parse_commands(&b),
            Err(FramingError::Overrun { .. })
        ));
        let mut b = cmd(0, 16, 1);
        b[12..16].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(parse_commands(&b), Err(FramingError::MisalignedResponse(3)));
        let mut b = cmd(0, 16, 1);
        b.extend([0u8; 8]);
        assert_eq!(parse_commands(&b), Err(FramingError::TruncatedHeader(16)));
    }
}
