//! Parent <-> child framing: a 4-byte little-endian length, then a bincode payload. Shared by
//! both sides; the parent uses the async readers, the child the blocking ones.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ChildError;

/// Largest frame either side accepts (a guard against a corrupt length).
pub const MAX_FRAME: usize = 256 * 1024 * 1024;

/// A task for the child to run. Arguments travel as JSON text (bincode cannot carry
/// self-describing JSON values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Task id.
    pub task_id: String,
    /// Registered task name.
    pub name: String,
    /// Positional args as a JSON array.
    pub args_json: String,
    /// Keyword args as a JSON object.
    pub kwargs_json: String,
    /// Retry count.
    pub retries: u32,
    /// The worker's node name.
    pub hostname: String,
    /// Report the child's resident memory after the task (`max_memory_per_child` is set);
    /// otherwise the child does not measure it.
    pub measure_memory: bool,
}

/// Parent -> child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToChild {
    /// Run this task and answer with [`FromChild::Done`].
    Run(Job),
}

/// How a task ended, as the child reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobOutcome {
    /// Returned a value (JSON text).
    Success {
        /// The return value as JSON.
        result_json: String,
    },
    /// Returned an error or panicked.
    Failure {
        /// Exception class name.
        exc_type: String,
        /// Exception module.
        exc_module: String,
        /// Exception args as a JSON array.
        args_json: String,
        /// Traceback-like text.
        traceback: String,
        /// The task asked to be retried after this many seconds.
        retry_in: Option<f64>,
    },
}

/// Child -> parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromChild {
    /// The child is up and waits for work.
    Ready {
        /// Its pid.
        pid: u32,
    },
    /// The running task asks the worker for something (a state update, a task to send).
    Signal(crate::task::TaskSignal),
    /// The current job ended.
    Done {
        /// How it ended.
        outcome: JobOutcome,
        /// The child's resident memory afterwards, in KiB (for `max_memory_per_child`); 0 when
        /// the job did not ask for it.
        rss_kib: u64,
    },
}

/// Encodes one frame (length prefix included), in one buffer.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, ChildError> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&[0u8; 4]);
    bincode::serde::encode_into_std_write(msg, &mut out, bincode::config::standard())
        .map_err(|e| ChildError::Frame(e.to_string()))?;
    let len =
        u32::try_from(out.len() - 4).map_err(|_| ChildError::Frame("frame too large".into()))?;
    out[..4].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

fn decode_payload<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, ChildError> {
    bincode::serde::decode_from_slice(payload, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| ChildError::Frame(e.to_string()))
}

fn check_len(len: u32) -> Result<usize, ChildError> {
    let len = len as usize;
    if len > MAX_FRAME {
        return Err(ChildError::Frame(format!(
            "frame of {len} bytes exceeds the limit"
        )));
    }
    Ok(len)
}

/// Reads one frame, blocking; `Ok(None)` at a clean end of stream.
pub fn read_frame_blocking<T: for<'de> Deserialize<'de>>(
    r: &mut impl Read,
) -> Result<Option<T>, ChildError> {
    match read_payload_blocking(r)? {
        Some(payload) => decode_payload(&payload).map(Some),
        None => Ok(None),
    }
}

/// Reads one frame's payload (the bytes after its length), blocking, whatever its encoding;
/// `Ok(None)` at a clean end of stream. A length over [`MAX_FRAME`] is an error.
pub fn read_payload_blocking(r: &mut impl Read) -> Result<Option<Vec<u8>>, ChildError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut payload = vec![0u8; check_len(u32::from_le_bytes(len))?];
    r.read_exact(&mut payload)?;
    Ok(Some(payload))
}

/// Writes one frame, blocking, and flushes.
pub fn write_frame_blocking<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), ChildError> {
    w.write_all(&encode_frame(msg)?)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<T: for<'de> Deserialize<'de>>(
    r: &mut (impl AsyncRead + Unpin),
) -> Result<Option<T>, ChildError> {
    match read_payload(r).await? {
        Some(payload) => decode_payload(&payload).map(Some),
        None => Ok(None),
    }
}

/// Reads one frame's payload, whatever its encoding; `Ok(None)` at a clean end of stream.
pub async fn read_payload(r: &mut (impl AsyncRead + Unpin)) -> Result<Option<Vec<u8>>, ChildError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut payload = vec![0u8; check_len(u32::from_le_bytes(len))?];
    r.read_exact(&mut payload).await?;
    Ok(Some(payload))
}

/// Writes an encoded frame and flushes.
pub async fn write_all(w: &mut (impl AsyncWrite + Unpin), frame: &[u8]) -> Result<(), ChildError> {
    w.write_all(frame).await?;
    w.flush().await?;
    Ok(())
}

/// Writes one frame and flushes.
pub async fn write_frame<T: Serialize>(
    w: &mut (impl AsyncWrite + Unpin),
    msg: &T,
) -> Result<(), ChildError> {
    write_all(w, &encode_frame(msg)?).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let job = ToChild::Run(Job {
            task_id: "t".into(),
            name: "tasks.add".into(),
            args_json: "[2,3]".into(),
            kwargs_json: "{}".into(),
            retries: 0,
            hostname: "celery@h".into(),
            measure_memory: false,
        });
        let mut buf = Vec::new();
        write_frame_blocking(&mut buf, &job).unwrap();
        write_frame_blocking(&mut buf, &FromChild::Ready { pid: 9 }).unwrap();
        let mut r = std::io::Cursor::new(buf);
        assert_eq!(read_frame_blocking::<ToChild>(&mut r).unwrap(), Some(job));
        assert_eq!(
            read_frame_blocking::<FromChild>(&mut r).unwrap(),
            Some(FromChild::Ready { pid: 9 })
        );
        assert_eq!(read_frame_blocking::<FromChild>(&mut r).unwrap(), None);
    }

    #[test]
    fn rejects_oversized_and_garbage_frames() {
        let mut r = std::io::Cursor::new(u32::MAX.to_le_bytes().to_vec());
        assert!(read_frame_blocking::<ToChild>(&mut r).is_err());
        let mut bad = 3u32.to_le_bytes().to_vec();
        bad.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(read_frame_blocking::<ToChild>(&mut std::io::Cursor::new(bad)).is_err());
    }

    #[tokio::test]
    async fn async_side_reads_blocking_side() {
        let mut buf = Vec::new();
        write_frame_blocking(&mut buf, &FromChild::Ready { pid: 1 }).unwrap();
        let mut r = std::io::Cursor::new(buf);
        let got: Option<FromChild> = read_frame(&mut r).await.unwrap();
        assert_eq!(got, Some(FromChild::Ready { pid: 1 }));
    }
}
