//! Spools: what one channel's sender has sent and its reader has not taken
//! yet, held by burrow instead of by russh.
//!
//! russh grants SSH window as soon as data *arrives*, and its session loop
//! awaits each channel's bounded queue. A channel whose queue sits unread
//! (a visitor downloading slowly) would therefore park the whole SSH
//! connection: every other channel of it, other forwards, keepalives. So a
//! pump ([`super::channel`]) drains every channel the moment data arrives
//! into a [`Spool`], the way nginx buffers a proxied response: memory up to
//! a per-stream cap, then an unlinked temporary file up to a larger cap,
//! both also inside process-wide budgets.
//!
//! A spool whose reader has read all of its file gives the file back at
//! once: it is closed and its bytes return to both the stream's and the
//! process-wide disk budget. A keep-alive channel idling in the pool after a
//! large download thus holds no disk, and the next spill starts a fresh
//! file with the stream's whole budget.
//!
//! A spool that cannot take more is *cut*: its reader gets an error, the
//! channel is closed and a log line names the limit. Pausing just that one
//! channel is not an option: with russh it would pause its neighbours too.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes};
use tokio::io::ReadBuf;
use tokio::task::JoinHandle;

/// Largest single read from a spill file.
const FILE_READ_CHUNK: u64 = 64 * 1024;

/// Spool limits, from the command line.
#[derive(Debug, Clone)]
pub struct SpoolLimits {
    /// Bytes one stream may hold in memory before it spills to disk.
    pub memory_per_stream: u64,
    /// Bytes one stream may hold on disk; 0 = never spill.
    pub disk_per_stream: u64,
    /// Memory all spools together may hold.
    pub memory_total: u64,
    /// Disk all spools together may hold.
    pub disk_total: u64,
    /// Where spill files are created (they are unlinked at once).
    pub dir: PathBuf,
}

impl From<&crate::config::SpoolArgs> for SpoolLimits {
    fn from(args: &crate::config::SpoolArgs) -> Self {
        SpoolLimits {
            memory_per_stream: args.spool_memory_per_stream,
            disk_per_stream: args.spool_disk_per_stream,
            memory_total: args.spool_memory_total,
            disk_total: args.spool_disk_total,
            dir: args.spool_dir.clone().unwrap_or_else(std::env::temp_dir),
        }
    }
}

/// Process-wide spool accounting, shared by every spool.
pub struct Budget {
    limits: SpoolLimits,
    memory: AtomicU64,
    disk: AtomicU64,
    cut: AtomicU64,
}

impl Budget {
    pub fn new(limits: SpoolLimits) -> Arc<Self> {
        Arc::new(Budget {
            limits,
            memory: AtomicU64::new(0),
            disk: AtomicU64::new(0),
            cut: AtomicU64::new(0),
        })
    }

    /// Bytes held in memory by all spools now.
    pub fn memory_used(&self) -> u64 {
        self.memory.load(Ordering::Relaxed)
    }

    /// Bytes of spill files of all spools now.
    pub fn disk_used(&self) -> u64 {
        self.disk.load(Ordering::Relaxed)
    }

    /// Streams cut because a spool was full, since start.
    pub fn streams_cut(&self) -> u64 {
        self.cut.load(Ordering::Relaxed)
    }

    fn take(counter: &AtomicU64, n: u64, max: u64) -> bool {
        counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= max)
            })
            .is_ok()
    }
}

/// Why a spool refused more data: the limit's flag name and its value.
#[derive(Debug, Clone)]
pub struct Full {
    pub limit: &'static str,
    pub detail: String,
}

impl Full {
    fn limit(limit: &'static str, value: u64) -> Self {
        Full {
            limit,
            detail: format!("{limit} ({}) reached", bytesize::ByteSize(value)),
        }
    }

    fn io(what: &str, err: io::Error) -> Self {
        Full {
            limit: "spool-dir",
            detail: format!("{what}: {err}"),
        }
    }
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// The buffer between one channel's pump (writer) and its reader.
pub struct Spool {
    budget: Arc<Budget>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    memory: VecDeque<Bytes>,
    memory_len: u64,
    spill: Option<Spill>,
    end: Option<End>,
    waker: Option<Waker>,
}

/// The on-disk part: bytes `[read, written)` of `file` are unread and
/// `[written, charged)` are being written by the pump. The file only grows;
/// once the reader has read all of it with no write in flight, the reader
/// drops it ([`State::release_drained`]), so no offset is ever reused under
/// a read or a write in flight.
struct Spill {
    /// The unlinked temporary file; reads and writes in flight hold clones.
    file: Arc<File>,
    /// Bytes of the file the reader has taken (only the reader moves it).
    read: u64,
    /// Bytes of the file written and readable (only the pump moves it).
    written: u64,
    /// Bytes taken from the disk budgets for this file: `written` plus the
    /// write in flight. Larger than `written` exactly while the pump
    /// writes, which tells the reader the file is not drained yet.
    charged: u64,
}

impl Spill {
    /// Reads the next unread part of the file, off the async threads.
    fn read_next(&self) -> JoinHandle<io::Result<Bytes>> {
        let len = (self.written - self.read).min(FILE_READ_CHUNK) as usize;
        let (file, offset) = (Arc::clone(&self.file), self.read);
        tokio::task::spawn_blocking(move || {
            let mut bytes = vec![0; len];
            file.read_exact_at(&mut bytes, offset)?;
            Ok(Bytes::from(bytes))
        })
    }
}

enum End {
    Eof,
    Cut(String),
}

impl State {
    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn file_backlog(&self) -> u64 {
        self.spill.as_ref().map_or(0, |s| s.written - s.read)
    }

    /// Takes the spill file away if the reader has read all of it and no
    /// write is in flight, returning its bytes to the disk budget. The
    /// caller closes the returned file (off the async threads).
    fn release_drained(&mut self, budget: &Budget) -> Option<Arc<File>> {
        // read <= written <= charged, so this means all three are equal.
        self.spill.as_ref().filter(|s| s.read == s.charged)?;
        let spill = self.spill.take()?;
        budget.disk.fetch_sub(spill.charged, Ordering::Relaxed);
        Some(spill.file)
    }
}

impl Spool {
    pub fn new(budget: Arc<Budget>) -> Arc<Self> {
        Arc::new(Spool {
            budget,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue half
        // edited (every edit is a single push/pop), so poisoning is moot.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues bytes that arrived on the channel: in memory if they fit,
    /// else appended to the spill file.
    pub async fn push(&self, data: Bytes) -> Result<(), Full> {
        // Nothing to keep; and every write to the file must grow `charged`
        // (see `Spill`), which an empty one would not.
        if data.is_empty() {
            return Ok(());
        }
        let n = data.len() as u64;
        let limits = &self.budget.limits;
        let (file, offset) = {
            let mut state = self.lock();
            // Memory only while nothing older waits on disk, so bytes stay
            // in order: all of memory precedes all of the file backlog.
            if state.file_backlog() == 0
                && state.memory_len + n <= limits.memory_per_stream
                && Budget::take(&self.budget.memory, n, limits.memory_total)
            {
                state.memory_len += n;
                state.memory.push_back(data);
                state.wake();
                return Ok(());
            }
            // Only the pump pushes, so no write is in flight: the file's
            // charge is its length, and a drained file is already gone.
            let offset = state.spill.as_ref().map_or(0, |s| s.written);
            if offset + n > limits.disk_per_stream {
                return Err(if limits.disk_per_stream == 0 {
                    Full::limit("spool-memory-per-stream", limits.memory_per_stream)
                } else {
                    Full::limit("spool-disk-per-stream", limits.disk_per_stream)
                });
            }
            if !Budget::take(&self.budget.disk, n, limits.disk_total) {
                return Err(Full::limit("spool-disk-total", limits.disk_total));
            }
            match state.spill.as_mut() {
                Some(spill) => {
                    spill.charged += n;
                    (Some(Arc::clone(&spill.file)), offset)
                }
                None => (None, 0),
            }
        };
        // Only the pump pushes, so nobody else creates or appends meanwhile.
        let file = match file {
            Some(file) => file,
            None => self.create_spill(n).await?,
        };
        let writer = Arc::clone(&file);
        tokio::task::spawn_blocking(move || writer.write_all_at(&data, offset))
            .await
            .map_err(|e| Full::io("spill write", io::Error::other(e)))?
            .map_err(|e| Full::io("spill write", e))?;
        let mut state = self.lock();
        if let Some(spill) = state.spill.as_mut() {
            spill.written = offset + n;
        }
        state.wake();
        Ok(())
    }

    /// Creates the (unlinked) spill file; `charged` bytes of disk budget
    /// were already taken for it.
    async fn create_spill(&self, charged: u64) -> Result<Arc<File>, Full> {
        let dir = self.budget.limits.dir.clone();
        let created = tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir))
            .await
            .map_err(io::Error::other)
            .and_then(|r| r);
        let file = match created {
            Ok(file) => Arc::new(file),
            Err(err) => {
                self.budget.disk.fetch_sub(charged, Ordering::Relaxed);
                return Err(Full::io("spill file", err));
            }
        };
        self.lock().spill = Some(Spill {
            file: Arc::clone(&file),
            read: 0,
            written: 0,
            charged,
        });
        Ok(file)
    }

    /// The sender is done: the reader gets end-of-file after the backlog.
    pub fn finish(&self) {
        let mut state = self.lock();
        state.end.get_or_insert(End::Eof);
        state.wake();
    }

    /// Ends the stream with an error now. Buffered bytes, memory and disk
    /// are released at once, not when the reader gets round to noticing:
    /// a stalled visitor's connection may not poll its reader again until
    /// it goes away.
    pub fn cut(&self, why: &Full) {
        self.budget.cut.fetch_add(1, Ordering::Relaxed);
        self.abort(why.to_string());
    }

    /// Ends the stream with an error now, like [`Spool::cut`], for a
    /// sender that failed (not counted as a spool that was full).
    pub fn abort(&self, why: String) {
        let mut state = self.lock();
        state.end = Some(End::Cut(why));
        let freed = std::mem::take(&mut state.memory_len);
        state.memory.clear();
        self.budget.memory.fetch_sub(freed, Ordering::Relaxed);
        if let Some(spill) = state.spill.take() {
            self.budget.disk.fetch_sub(spill.charged, Ordering::Relaxed);
        }
        state.wake();
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        self.budget
            .memory
            .fetch_sub(state.memory_len, Ordering::Relaxed);
        if let Some(spill) = &state.spill {
            self.budget.disk.fetch_sub(spill.charged, Ordering::Relaxed);
        }
    }
}

/// The reading end of a spool, as an `AsyncRead`-style poll function.
pub struct SpoolReader {
    spool: Arc<Spool>,
    /// A file read in flight.
    pending: Option<JoinHandle<io::Result<Bytes>>>,
    /// Bytes read from the file that did not fit the caller's buffer.
    leftover: Bytes,
}

impl SpoolReader {
    pub fn new(spool: Arc<Spool>) -> Self {
        SpoolReader {
            spool,
            pending: None,
            leftover: Bytes::new(),
        }
    }

    /// The next chunk as the sender pushed it (no copy while it is in
    /// memory), or `None` at the end: for bodies, which move `Bytes`.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            if !self.leftover.is_empty() {
                return Poll::Ready(Some(Ok(std::mem::take(&mut self.leftover))));
            }
            if let Some(task) = self.pending.as_mut() {
                let read = ready!(Pin::new(task).poll(cx));
                self.pending = None;
                self.leftover = self.file_read(read)?;
                continue;
            }
            let mut state = self.spool.lock();
            if let Some(End::Cut(why)) = &state.end {
                let err = io::Error::new(io::ErrorKind::ConnectionAborted, why.clone());
                return Poll::Ready(Some(Err(err)));
            }
            if let Some(chunk) = state.memory.pop_front() {
                let k = chunk.len() as u64;
                state.memory_len -= k;
                self.spool.budget.memory.fetch_sub(k, Ordering::Relaxed);
                return Poll::Ready(Some(Ok(chunk)));
            }
            if let Some(spill) = state.spill.as_ref().filter(|s| s.read < s.written) {
                self.pending = Some(spill.read_next());
                continue;
            }
            if state.end.is_some() {
                return Poll::Ready(None);
            }
            state.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
    }

    /// Accounts for a finished read from the spill file; the bytes read.
    fn file_read(
        &mut self,
        read: Result<io::Result<Bytes>, tokio::task::JoinError>,
    ) -> io::Result<Bytes> {
        let bytes = read.map_err(io::Error::other)??;
        let drained = {
            let mut state = self.spool.lock();
            if let Some(spill) = state.spill.as_mut() {
                spill.read += bytes.len() as u64;
            }
            state.release_drained(&self.spool.budget)
        };
        if let Some(file) = drained {
            // Closing the last handle of an unlinked file frees its
            // blocks and page cache: slow for a large file.
            tokio::task::spawn_blocking(move || drop(file));
        }
        Ok(bytes)
    }

    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.leftover.is_empty() {
                let k = self.leftover.len().min(buf.remaining());
                buf.put_slice(&self.leftover[..k]);
                self.leftover.advance(k);
                return Poll::Ready(Ok(()));
            }
            if let Some(task) = self.pending.as_mut() {
                let read = ready!(Pin::new(task).poll(cx));
                self.pending = None;
                self.leftover = self.file_read(read)?;
                continue;
            }
            let mut state = self.spool.lock();
            if let Some(End::Cut(why)) = &state.end {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    why.clone(),
                )));
            }
            if let Some(chunk) = state.memory.front_mut() {
                let k = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..k]);
                chunk.advance(k);
                if chunk.is_empty() {
                    state.memory.pop_front();
                }
                state.memory_len -= k as u64;
                self.spool
                    .budget
                    .memory
                    .fetch_sub(k as u64, Ordering::Relaxed);
                return Poll::Ready(Ok(()));
            }
            if let Some(spill) = state.spill.as_ref().filter(|s| s.read < s.written) {
                self.pending = Some(spill.read_next());
                continue;
            }
            if state.end.is_some() {
                return Poll::Ready(Ok(()));
            }
            state.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn budget(memory_per_stream: u64, disk_per_stream: u64) -> Arc<Budget> {
        Budget::new(SpoolLimits {
            memory_per_stream,
            disk_per_stream,
            memory_total: 1 << 30,
            disk_total: 1 << 30,
            dir: std::env::temp_dir(),
        })
    }

    async fn read_all(reader: &mut SpoolReader) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let mut raw = [0u8; 7000];
            let mut buf = ReadBuf::new(&mut raw);
            poll_fn(|cx| reader.poll_read(cx, &mut buf)).await?;
            if buf.filled().is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(buf.filled());
        }
    }

    fn chunk(i: usize, len: usize) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|j| ((i * 31 + j) % 251) as u8)
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn bytes_come_out_in_order_across_memory_and_disk() {
        let budget = budget(10_000, 1 << 20);
        let spool = Spool::new(Arc::clone(&budget));
        let mut expected = Vec::new();
        for i in 0..40 {
            let data = chunk(i, 3000);
            expected.extend_from_slice(&data);
            spool.push(data).await.unwrap();
        }
        assert!(budget.memory_used() <= 10_000);
        assert!(
            budget.disk_used() > 0,
            "a backlog beyond memory spills to disk"
        );
        spool.finish();
        let mut reader = SpoolReader::new(Arc::clone(&spool));
        assert_eq!(read_all(&mut reader).await.unwrap(), expected);
        assert_eq!(budget.memory_used(), 0);
        assert_eq!(budget.disk_used(), 0);
    }

    /// Reads exactly `n` bytes (the spool stays open, as a pooled
    /// keep-alive channel's does between responses).
    async fn read_exactly(reader: &mut SpoolReader, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < n {
            let mut raw = vec![0u8; (n - out.len()).min(7000)];
            let mut buf = ReadBuf::new(&mut raw);
            poll_fn(|cx| reader.poll_read(cx, &mut buf)).await.unwrap();
            assert!(!buf.filled().is_empty(), "early end after {}", out.len());
            out.extend_from_slice(buf.filled());
        }
        out
    }

    #[tokio::test]
    async fn a_drained_spool_gives_its_disk_back_at_once() {
        let budget = budget(1000, 4000);
        let spool = Spool::new(Arc::clone(&budget));
        let mut reader = SpoolReader::new(Arc::clone(&spool));
        for round in 0..3 {
            let (first, second) = (chunk(round, 1000), chunk(round + 1, 4000));
            spool.push(first.clone()).await.unwrap();
            spool.push(second.clone()).await.unwrap();
            assert_eq!(budget.disk_used(), 4000, "round {round}: spilled");
            let got = read_exactly(&mut reader, 5000).await;
            assert!(got == [first, second].concat(), "round {round}: bytes");
            assert_eq!(budget.memory_used(), 0);
            assert_eq!(
                budget.disk_used(),
                0,
                "round {round}: the reader caught up, the disk is released"
            );
            // The next round spills the whole per-stream budget again.
        }
        let full = async {
            spool.push(chunk(9, 1000)).await.unwrap();
            spool.push(chunk(9, 4000)).await.unwrap();
            spool.push(chunk(9, 1)).await.unwrap_err()
        };
        assert_eq!(full.await.limit, "spool-disk-per-stream", "and no more");
    }

    #[tokio::test]
    async fn a_drained_idle_spool_leaves_the_total_to_others() {
        let budget = Budget::new(SpoolLimits {
            memory_per_stream: 1000,
            disk_per_stream: 4000,
            memory_total: 1 << 20,
            disk_total: 4000,
            dir: std::env::temp_dir(),
        });
        let idle = Spool::new(Arc::clone(&budget));
        let mut reader = SpoolReader::new(Arc::clone(&idle));
        idle.push(chunk(0, 1000)).await.unwrap();
        idle.push(chunk(1, 4000)).await.unwrap();
        read_exactly(&mut reader, 5000).await;
        // `idle` stays open with nothing buffered; another stream needs
        // the whole process-wide disk budget.
        let other = Spool::new(Arc::clone(&budget));
        other.push(chunk(2, 1000)).await.unwrap();
        other.push(chunk(3, 4000)).await.unwrap();
        assert_eq!(budget.disk_used(), 4000);
        drop((reader, idle));
    }

    #[tokio::test]
    async fn a_dropped_spool_frees_what_it_holds() {
        let budget = budget(1000, 1 << 20);
        let spool = Spool::new(Arc::clone(&budget));
        spool.push(chunk(0, 1000)).await.unwrap();
        spool.push(chunk(1, 3000)).await.unwrap();
        assert_eq!((budget.memory_used(), budget.disk_used()), (1000, 3000));
        drop(spool);
        assert_eq!((budget.memory_used(), budget.disk_used()), (0, 0));
    }

    /// A writer and a reader on two threads, the reader catching up with
    /// the file again and again (and sometimes while a write is in flight):
    /// the bytes stay in order and every drained file is given back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_drains_keep_order_and_free_the_disk() {
        let budget = budget(4000, 1 << 20);
        let spool = Spool::new(Arc::clone(&budget));
        let mut reader = SpoolReader::new(Arc::clone(&spool));
        let mut expected = Vec::new();
        let chunks: Vec<Bytes> = (0..400).map(|i| chunk(i, 1 + (i * 613) % 3000)).collect();
        for data in &chunks {
            expected.extend_from_slice(data);
        }
        let writer = tokio::spawn({
            let (spool, budget) = (Arc::clone(&spool), Arc::clone(&budget));
            async move {
                let mut spilled = false;
                for (i, data) in chunks.into_iter().enumerate() {
                    spool.push(data).await.unwrap();
                    spilled |= budget.disk_used() > 0;
                    if i % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                spool.finish();
                spilled
            }
        });
        let got = read_all(&mut reader).await.unwrap();
        assert!(writer.await.unwrap(), "the writer got ahead onto disk");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes reordered");
        assert_eq!((budget.memory_used(), budget.disk_used()), (0, 0));
    }

    #[tokio::test]
    async fn interleaved_reads_and_writes_keep_order() {
        let budget = budget(5_000, 1 << 20);
        let spool = Spool::new(Arc::clone(&budget));
        let mut reader = SpoolReader::new(Arc::clone(&spool));
        let mut expected = Vec::new();
        let mut got = Vec::new();
        for i in 0..200 {
            let data = chunk(i, 1 + (i * 977) % 4000);
            expected.extend_from_slice(&data);
            spool.push(data).await.unwrap();
            if i % 3 == 0 {
                let mut raw = [0u8; 2500];
                let mut buf = ReadBuf::new(&mut raw);
                poll_fn(|cx| reader.poll_read(cx, &mut buf)).await.unwrap();
                got.extend_from_slice(buf.filled());
            }
        }
        spool.finish();
        got.extend(read_all(&mut reader).await.unwrap());
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes reordered");
    }

    #[tokio::test]
    async fn a_full_spool_refuses_and_names_the_limit() {
        let spool = Spool::new(budget(1000, 0));
        spool.push(chunk(0, 1000)).await.unwrap();
        let full = spool.push(chunk(1, 1)).await.unwrap_err();
        assert_eq!(full.limit, "spool-memory-per-stream");

        let spool = Spool::new(budget(1000, 4000));
        spool.push(chunk(0, 1000)).await.unwrap();
        spool.push(chunk(1, 4000)).await.unwrap();
        let full = spool.push(chunk(2, 1)).await.unwrap_err();
        assert_eq!(full.limit, "spool-disk-per-stream");
    }

    #[tokio::test]
    async fn a_cut_spool_fails_its_reader_and_frees_memory() {
        let budget = budget(1000, 1 << 20);
        let spool = Spool::new(Arc::clone(&budget));
        spool.push(chunk(0, 800)).await.unwrap();
        let full = Full::limit("spool-memory-per-stream", 1000);
        spool.cut(&full);
        assert_eq!(budget.memory_used(), 0);
        assert_eq!(budget.streams_cut(), 1);
        let spool = Spool::new(Arc::clone(&budget));
        let _held = Arc::clone(&spool); // a reader that never reads again
        spool.push(chunk(0, 1000)).await.unwrap();
        spool.push(chunk(1, 900)).await.unwrap();
        assert!(budget.disk_used() > 0);
        spool.cut(&full);
        assert_eq!(budget.disk_used(), 0, "a cut spool frees its disk at once");
        let mut reader = SpoolReader::new(spool);
        let err = read_all(&mut reader).await.unwrap_err();
        assert!(err.to_string().contains("spool-memory-per-stream"), "{err}");
    }

    #[tokio::test]
    async fn the_global_memory_budget_sends_bytes_to_disk() {
        let budget = Budget::new(SpoolLimits {
            memory_per_stream: 10_000,
            disk_per_stream: 1 << 20,
            memory_total: 1500,
            disk_total: 1 << 20,
            dir: std::env::temp_dir(),
        });
        let a = Spool::new(Arc::clone(&budget));
        let b = Spool::new(Arc::clone(&budget));
        a.push(chunk(0, 1000)).await.unwrap();
        b.push(chunk(1, 1000)).await.unwrap();
        assert_eq!(budget.memory_used(), 1000);
        assert_eq!(budget.disk_used(), 1000);
    }
}
