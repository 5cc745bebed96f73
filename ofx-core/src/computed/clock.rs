//! [`Queue`]: the evictor's clock, a FIFO that grows and shrinks in fixed chunks.

use std::collections::VecDeque;

/// Items per chunk: 16 KiB chunks of 16-byte items.
const CHUNK: usize = 1024;

/// A FIFO queue stored in chunks of [`CHUNK`] items.
///
/// A `VecDeque` doubles its buffer as it grows: holding `n` items it has room for up to `2n`,
/// 1.3 to 2 times what it holds (16 bytes per item of the evictor's clock become 21 to 32 per
/// cached entry). Chunks waste at most one chunk, and a queue that shrinks frees its chunks.
#[derive(Debug)]
pub(crate) struct Queue<T> {
    chunks: VecDeque<VecDeque<T>>,
    len: usize,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self {
            chunks: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> Queue<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn push_back(&mut self, item: T) {
        match self.chunks.back_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push_back(item),
            _ => {
                let mut chunk = VecDeque::with_capacity(CHUNK);
                chunk.push_back(item);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        let chunk = self.chunks.front_mut()?;
        let item = chunk.pop_front();
        if chunk.is_empty() {
            self.chunks.pop_front();
        }
        if item.is_some() {
            self.len -= 1;
        }
        item
    }

    /// Keeps the items for which `keep` returns `true`, in order, packed into full chunks.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let mut kept = Self::default();
        for chunk in std::mem::take(&mut self.chunks) {
            for item in chunk {
                if keep(&item) {
                    kept.push_back(item);
                }
            }
        }
        *self = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_leave_in_the_order_they_came_across_chunks() {
        let mut queue = Queue::default();
        let count = 3 * CHUNK + 7;
        for item in 0..count {
            queue.push_back(item);
        }
        assert_eq!(queue.len(), count);
        assert_eq!(queue.chunks.len(), 4);
        for expected in 0..count {
            assert_eq!(queue.pop_front(), Some(expected));
        }
        assert_eq!(queue.pop_front(), None);
        assert_eq!(queue.len(), 0);
        assert!(queue.chunks.is_empty(), "an empty queue keeps no chunk");
    }

    #[test]
    fn retain_keeps_order_and_packs_chunks() {
        let mut queue = Queue::default();
        for item in 0..4 * CHUNK {
            queue.push_back(item);
        }
        queue.retain(|item| item % 4 == 0);
        assert_eq!(queue.len(), CHUNK);
        assert_eq!(queue.chunks.len(), 1);
        let drained: Vec<_> = std::iter::from_fn(|| queue.pop_front()).collect();
        assert_eq!(drained, (0..4 * CHUNK).step_by(4).collect::<Vec<_>>());
    }

    #[test]
    fn pushes_after_pops_reuse_the_last_chunk() {
        let mut queue = Queue::default();
        for item in 0..CHUNK + 1 {
            queue.push_back(item);
        }
        for _ in 0..CHUNK {
            queue.pop_front();
        }
        assert_eq!(queue.chunks.len(), 1);
        queue.push_back(CHUNK + 1);
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.pop_front(), Some(CHUNK));
        assert_eq!(queue.pop_front(), Some(CHUNK + 1));
    }
}
