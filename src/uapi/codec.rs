//! Encoding and decoding of native-context commands, shared by the guest
//! tools (which build commands) and the daemon (which reads them).
//!
//! - [`CommandWriter`] builds one command: header, fixed request, then the
//!   arrays the request points at, each placed in the payload area and
//!   described by the [`ObjArray`] the writer returns.
//! - [`RequestView`] reads one command body: the fixed request, and arrays
//!   under the compatibility rules of Panthor's `obj_array` (§3.4 of
//!   `docs/protocol.md`): a stride below the element's minimum or not a
//!   multiple of 8 is `EINVAL`, an array outside the payload area is
//!   `EFAULT`, shorter elements are zero-extended, and non-zero bytes beyond
//!   the known element are `E2BIG`.
//! - Small helpers for response slots and sequence numbers.
//!
//! The wire is little-endian and so is every host this builds for; the
//! structs are copied as bytes.

use std::marker::PhantomData;
use std::mem::size_of;

use thiserror::Error;
use vm_memory::ByteValued;

use super::native::{
    errno, ArrayElement, NativeCmdHdr, NativeRequest, ObjArray, NATIVE_ALIGN, NATIVE_CMD_NOP,
    NATIVE_HDR_SIZE, RSP_MEM_HEADER_SIZE, RSP_NONE,
};

const _: () = assert!(
    cfg!(target_endian = "little"),
    "the wire structs are copied as bytes and the wire is little-endian"
);

/// Builds one command of type `R`.
#[derive(Debug)]
pub struct CommandWriter<R: NativeRequest> {
    buf: Vec<u8>,
    _req: PhantomData<R>,
}

impl<R: NativeRequest> CommandWriter<R> {
    /// Starts a command: header and a zeroed request, and an empty payload
    /// area.
    pub fn new(seqno: u32, rsp_off: u32) -> Self {
        let hdr = NativeCmdHdr {
            cmd: R::CMD,
            len: 0,
            seqno,
            rsp_off,
        };
        let mut buf = Vec::with_capacity(size_of::<NativeCmdHdr>() + size_of::<R>());
        buf.extend_from_slice(hdr.as_slice());
        buf.extend_from_slice(R::default().as_slice());
        Self {
            buf,
            _req: PhantomData,
        }
    }

    /// Appends `items` to the payload area and returns the array that
    /// describes them (stride = the element size). An empty slice appends
    /// nothing and gives `{stride, 0, 0}`.
    pub fn array<T: ArrayElement>(&mut self, items: &[T]) -> ObjArray {
        let stride = size_of::<T>() as u32;
        if items.is_empty() {
            return ObjArray {
                stride,
                count: 0,
                offset: 0,
            };
        }
        let offset = self.buf.len() as u64;
        for item in items {
            self.buf.extend_from_slice(item.as_slice());
        }
        ObjArray {
            stride,
            count: items.len() as u32,
            offset,
        }
    }

    /// Writes the request into its place, sets `len` and returns the
    /// command's bytes.
    pub fn finish(mut self, req: &R) -> Vec<u8> {
        let start = size_of::<NativeCmdHdr>();
        self.buf[start..start + size_of::<R>()].copy_from_slice(req.as_slice());
        // Every struct is a multiple of 8 bytes, so the command is too.
        debug_assert_eq!(self.buf.len() % NATIVE_ALIGN as usize, 0);
        let len = self.buf.len() as u32;
        self.buf[4..8].copy_from_slice(&len.to_le_bytes());
        self.buf
    }
}

/// Encodes a command without arrays.
pub fn encode<R: NativeRequest>(req: &R, seqno: u32, rsp_off: u32) -> Vec<u8> {
    CommandWriter::<R>::new(seqno, rsp_off).finish(req)
}

/// Encodes a NOP.
pub fn encode_nop(seqno: u32) -> Vec<u8> {
    NativeCmdHdr {
        cmd: NATIVE_CMD_NOP,
        len: NATIVE_HDR_SIZE,
        seqno,
        rsp_off: RSP_NONE,
    }
    .as_slice()
    .to_vec()
}

/// Why a command body could not be decoded. [`DecodeError::errno`] is the
/// errno its response reports.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The body is shorter than the command's request struct.
    #[error("command body of {len} bytes is shorter than its {need}-byte request")]
    ShortRequest {
        /// Body length.
        len: usize,
        /// Request size.
        need: usize,
    },
    /// `stride` is below the element's minimum size or not a multiple of 8.
    #[error("array stride {stride} is below {min} or not a multiple of 8")]
    BadStride {
        /// The stride.
        stride: u32,
        /// The element's minimum size.
        min: u32,
    },
    /// `offset` is not a multiple of 8.
    #[error("array offset {0:#x} is not 8-byte aligned")]
    MisalignedOffset(u64),
    /// The array does not lie inside the command's payload area.
    #[error("array of {count} x {stride} bytes at offset {offset:#x} is outside the payload area")]
    OutOfBounds {
        /// The offset.
        offset: u64,
        /// The element count.
        count: u32,
        /// The stride.
        stride: u32,
    },
    /// An element longer than this device's version of it has non-zero
    /// bytes past the known fields.
    #[error("array element {index} has non-zero bytes past the known fields")]
    UnknownTrailingBytes {
        /// Index of the element.
        index: u32,
    },
}

impl DecodeError {
    /// The (positive) errno to report, as Panthor reports the same mistake:
    /// `EINVAL` for a short request or a bad stride or alignment, `EFAULT`
    /// for an array outside the command (a bad pointer in the ioctl), and
    /// `E2BIG` for unknown non-zero trailing bytes (`copy_struct_from_user`).
    pub fn errno(&self) -> i32 {
        match self {
            DecodeError::ShortRequest { .. }
            | DecodeError::BadStride { .. }
            | DecodeError::MisalignedOffset(_) => errno::EINVAL,
            DecodeError::OutOfBounds { .. } => errno::EFAULT,
            DecodeError::UnknownTrailingBytes { .. } => errno::E2BIG,
        }
    }
}

/// A decoded command body: the request and access to its arrays.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a, R: NativeRequest> {
    req: R,
    body: &'a [u8],
}

impl<'a, R: NativeRequest> RequestView<'a, R> {
    /// Reads the request from a command body (the bytes after the header).
    /// Bytes after the request form the payload area.
    pub fn parse(body: &'a [u8]) -> Result<Self, DecodeError> {
        let need = size_of::<R>();
        let bytes = body.get(..need).ok_or(DecodeError::ShortRequest {
            len: body.len(),
            need,
        })?;
        let mut req = R::default();
        req.as_mut_slice().copy_from_slice(bytes);
        Ok(Self { req, body })
    }

    /// The request.
    pub fn request(&self) -> &R {
        &self.req
    }

    /// First command offset an array may use: just after the request.
    pub fn payload_start() -> u64 {
        (size_of::<NativeCmdHdr>() + size_of::<R>()) as u64
    }

    /// Command offset one past the payload area.
    pub fn payload_end(&self) -> u64 {
        (size_of::<NativeCmdHdr>() + self.body.len()) as u64
    }

    /// Reads an array of this command (the request's own, or one nested in
    /// an element of another array).
    pub fn array<T: ArrayElement>(&self, arr: &ObjArray) -> Result<Vec<T>, DecodeError> {
        self.elements(arr)?.collect()
    }

    /// The elements of an array, read one by one and without a copy of
    /// the whole array: the stride, offset and bounds are checked here,
    /// each element's trailing bytes when it is read. [`Self::array`]
    /// collects them.
    pub fn elements<T: ArrayElement>(
        &self,
        arr: &ObjArray,
    ) -> Result<Elements<'a, T>, DecodeError> {
        let empty = Elements {
            bytes: &[],
            stride: 1,
            index: 0,
            _elem: std::marker::PhantomData,
        };
        if arr.count == 0 {
            return Ok(empty);
        }
        if arr.stride < T::MIN_SIZE || arr.stride % NATIVE_ALIGN != 0 {
            return Err(DecodeError::BadStride {
                stride: arr.stride,
                min: T::MIN_SIZE,
            });
        }
        if arr.offset % u64::from(NATIVE_ALIGN) != 0 {
            return Err(DecodeError::MisalignedOffset(arr.offset));
        }
        let out_of_bounds = DecodeError::OutOfBounds {
            offset: arr.offset,
            count: arr.count,
            stride: arr.stride,
        };
        // count and stride are u32, so their product fits in a u64.
        let bytes = u64::from(arr.count) * u64::from(arr.stride);
        let end = arr.offset.checked_add(bytes).ok_or(out_of_bounds)?;
        if arr.offset < Self::payload_start() || end > self.payload_end() {
            return Err(out_of_bounds);
        }
        let hdr = size_of::<NativeCmdHdr>() as u64;
        // Inside the body by the checks above.
        let start = (arr.offset - hdr) as usize;
        Ok(Elements {
            bytes: &self.body[start..start + bytes as usize],
            stride: arr.stride as usize,
            ..empty
        })
    }
}

/// The elements of a checked array, in order (see
/// [`RequestView::elements`]). An element whose bytes past the known
/// struct are not zero is an error.
#[derive(Debug, Clone)]
pub struct Elements<'a, T> {
    bytes: &'a [u8],
    stride: usize,
    index: u32,
    _elem: std::marker::PhantomData<T>,
}

impl<T: ArrayElement> Iterator for Elements<'_, T> {
    type Item = Result<T, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (elem, rest) = self.bytes.split_at_checked(self.stride)?;
        self.bytes = rest;
        let index = self.index;
        self.index += 1;
        let known = size_of::<T>();
        let mut value = T::default();
        let n = known.min(self.stride);
        value.as_mut_slice()[..n].copy_from_slice(&elem[..n]);
        if self.stride > known && elem[known..].iter().any(|&b| b != 0) {
            return Some(Err(DecodeError::UnknownTrailingBytes { index }));
        }
        Some(Ok(value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.bytes.len() / self.stride;
        (n, Some(n))
    }
}

impl<T: ArrayElement> ExactSizeIterator for Elements<'_, T> {}

/// Size of the fixed response of `R`.
pub fn response_size<R: NativeRequest>() -> u32 {
    size_of::<R::Response>() as u32
}

/// `len` of a DEV_QUERY response for a requested `size`: the fixed part
/// plus `size` rounded up to 8.
pub fn dev_query_response_len(size: u32) -> u64 {
    let fixed = size_of::<super::native::DevQueryRsp>() as u64;
    fixed + u64::from(size).next_multiple_of(u64::from(NATIVE_ALIGN))
}

/// Checks that a response of `len` bytes at `rsp_off` fits a response
/// memory of `rsp_size` bytes: `Ok(false)` when no response is wanted
/// (`rsp_off == RSP_NONE`), `Ok(true)` when it fits, `Err(EFAULT)` when it
/// would overlap the header or run past the end.
pub fn check_response_slot(rsp_off: u32, len: u64, rsp_size: u64) -> Result<bool, i32> {
    if rsp_off == RSP_NONE {
        return Ok(false);
    }
    let fits = rsp_off >= RSP_MEM_HEADER_SIZE
        && rsp_off % NATIVE_ALIGN == 0
        && u64::from(rsp_off)
            .checked_add(len)
            .is_some_and(|end| end <= rsp_size);
    if fits {
        Ok(true)
    } else {
        Err(errno::EFAULT)
    }
}

/// Whether the response header's `seqno` shows that the command with
/// `seqno` was processed: `current` is at or after it, modulo 2^32.
pub fn seqno_reached(current: u32, seqno: u32) -> bool {
    (current.wrapping_sub(seqno) as i32) >= 0
}
