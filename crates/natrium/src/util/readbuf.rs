//! A connection's read buffer (clients, routes, leafnodes): each read takes at most the current
//! read size, which doubles while reads fill it and halves while they use under a quarter of it.

use std::ops::{Deref, DerefMut};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The bytes read and not yet processed, and how much the next read may take.
pub struct ReadBuf {
    buf: BytesMut,
    size: usize,
    min: usize,
    max: usize,
}

impl ReadBuf {
    /// Reads start at `min` bytes and grow to at most `max`.
    pub fn new(min: usize, max: usize) -> ReadBuf {
        ReadBuf {
            buf: BytesMut::with_capacity(min),
            size: min,
            min,
            max,
        }
    }

    /// Reads once from `rd` (0: the peer closed). A read takes at most the read size even when
    /// the buffer has grown larger (BytesMut doubles when it reserves around a partial message):
    /// a read is one delivery batch, and reads of megabytes made batches whose staged frames
    /// outgrew what delivery keeps (callgrind, fan-out 1 -> 4: a sixth of the server's
    /// instructions went to regrowing them).
    pub async fn read_from<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        rd: &mut R,
    ) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < self.size {
            self.buf.reserve(self.size);
        }
        let room = (self.buf.capacity() - self.buf.len()).min(self.size);
        let n = rd.read_buf(&mut (&mut self.buf).limit(room)).await?;
        if n >= room {
            self.size = (self.size * 2).min(self.max);
        } else if n < self.size / 4 {
            self.size = (self.size / 2).max(self.min);
        }
        Ok(n)
    }

    /// After processing: an empty buffer more than four times the current read size (which
    /// shrinks as reads get small) is given back, so a burst's large buffer does not stay.
    pub fn settle(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 4 * self.size {
            self.buf = BytesMut::with_capacity(self.size);
        }
    }
}

impl Deref for ReadBuf {
    type Target = BytesMut;
    fn deref(&self) -> &BytesMut {
        &self.buf
    }
}

impl DerefMut for ReadBuf {
    fn deref_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_take_at_most_the_read_size_which_follows_the_traffic() {
        let mut b = ReadBuf::new(4, 16);
        // A buffer grown far past the read size (as around a large partial message).
        b.reserve(1 << 20);
        let data = [7u8; 100];
        let mut rd = &data[..];
        let mut sizes = Vec::new();
        for _ in 0..5 {
            sizes.push(b.read_from(&mut rd).await.expect("read"));
        }
        assert_eq!(sizes, vec![4, 8, 16, 16, 16], "doubling up to the maximum");
        assert_eq!(b.len(), 60);
        b.clear();
        // Reads using under a quarter of the size halve it, down to the minimum.
        let mut small = &data[..1];
        b.read_from(&mut small).await.expect("read");
        let mut rest = &data[..];
        assert_eq!(b.read_from(&mut rest).await.expect("read"), 8);
        // Emptied and oversized: given back.
        b.clear();
        b.settle();
        assert!(b.capacity() <= 8 * 4);
    }
}
