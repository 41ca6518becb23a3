//! One embedder shared by many concurrent callers, batched across requests.
//!
//! [`EmbedQueue::start`] moves an [`Embedder`] onto a dedicated thread fed by a bounded queue.
//! The thread takes the first waiting request, then every request already queued behind it
//! (up to [`QueueOptions::max_batch_texts`] texts), embeds them in **one** call and hands each
//! caller its own vectors back — so requests that arrive together share a forward pass, as
//! text-embeddings-inference does. A full queue is refused at once ([`QueueError::Full`]);
//! nothing waits without bound.
//!
//! [`QueuedEmbedder`] implements [`Embedder`] over the queue, so the knowledge base, the
//! episodic store and the agent all go through the same batching thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use super::{EmbedError, Embedder, Precision};

/// Sizes of the queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueOptions {
    /// Requests that may wait at once; one more is refused with [`QueueError::Full`].
    pub capacity: usize,
    /// Most texts embedded in one batch (a single larger request is embedded whole).
    pub max_batch_texts: usize,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            capacity: 256,
            max_batch_texts: 128,
        }
    }
}

/// Why a queued embedding did not produce vectors.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue holds `capacity` requests already; try again shortly.
    #[error("the embedding queue is full ({0} requests waiting); retry shortly")]
    Full(usize),
    /// The embedding thread has stopped.
    #[error("the embedding thread has stopped")]
    Stopped,
    /// The model failed on the batch.
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

/// What the batching thread reports after each batch (for metrics).
pub trait BatchObserver: Send + Sync {
    /// One batch of `texts` texts from `requests` requests was embedded.
    fn batch(&self, requests: usize, texts: usize);
}

struct NoObserver;
impl BatchObserver for NoObserver {
    fn batch(&self, _requests: usize, _texts: usize) {}
}

type Reply = Box<dyn FnOnce(Result<Vec<Vec<f32>>, Arc<EmbedError>>) + Send>;

struct Job {
    texts: Vec<String>,
    reply: Reply,
}

/// The handle to the batching thread; cheap to clone.
#[derive(Clone)]
pub struct EmbedQueue {
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    dim: usize,
    max_tokens: usize,
    precision: Precision,
    counter: Arc<dyn Embedder>,
}

impl std::fmt::Debug for EmbedQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedQueue")
            .field("capacity", &self.capacity)
            .field("depth", &self.depth())
            .finish()
    }
}

impl EmbedQueue {
    /// Starts the batching thread over `embedder`.
    pub fn start(
        embedder: Arc<dyn Embedder>,
        opts: QueueOptions,
        observer: Option<Arc<dyn BatchObserver>>,
    ) -> Result<Self, std::io::Error> {
        let capacity = opts.capacity.max(1);
        let (tx, rx) = sync_channel::<Job>(capacity);
        let depth = Arc::new(AtomicUsize::new(0));
        let observer = observer.unwrap_or_else(|| Arc::new(NoObserver));
        let worker_embedder = Arc::clone(&embedder);
        let worker_depth = Arc::clone(&depth);
        let max_batch = opts.max_batch_texts.max(1);
        std::thread::Builder::new()
            .name("memex-embed".into())
            .spawn(move || run(rx, worker_embedder, worker_depth, max_batch, observer))?;
        Ok(EmbedQueue {
            tx,
            depth,
            capacity,
            dim: embedder.dim(),
            max_tokens: embedder.max_tokens(),
            precision: embedder.precision(),
            counter: embedder,
        })
    }

    /// Requests waiting or being embedded now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// The most requests that may wait.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn submit(&self, texts: Vec<String>, reply: Reply) -> Result<(), QueueError> {
        self.depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Job { texts, reply }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                Err(QueueError::Full(self.capacity))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                Err(QueueError::Stopped)
            }
        }
    }

    /// Embeds `texts` on the batching thread without blocking the async caller.
    pub async fn embed_async(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, QueueError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            texts,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )?;
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(QueueError::Embed(clone_error(&e))),
            Err(_) => Err(QueueError::Stopped),
        }
    }

    /// Embeds `texts` on the batching thread, blocking the calling thread until done.
    pub fn embed_blocking(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, QueueError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        self.submit(
            texts,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )?;
        match rx.recv() {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(QueueError::Embed(clone_error(&e))),
            Err(_) => Err(QueueError::Stopped),
        }
    }

    /// An [`Embedder`] that goes through this queue.
    pub fn embedder(&self) -> QueuedEmbedder {
        QueuedEmbedder {
            queue: self.clone(),
        }
    }
}

/// The model's error, re-created for each caller of a failed batch (it is not `Clone`).
fn clone_error(e: &EmbedError) -> EmbedError {
    EmbedError::Inference(e.to_string())
}

fn run(
    rx: Receiver<Job>,
    embedder: Arc<dyn Embedder>,
    depth: Arc<AtomicUsize>,
    max_batch: usize,
    observer: Arc<dyn BatchObserver>,
) {
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        let mut jobs = vec![first];
        let mut texts = jobs[0].texts.len();
        while texts < max_batch {
            match rx.try_recv() {
                Ok(j) if texts + j.texts.len() <= max_batch => {
                    texts += j.texts.len();
                    jobs.push(j);
                }
                Ok(j) => {
                    carry = Some(j);
                    break;
                }
                Err(_) => break,
            }
        }
        let all: Vec<&str> = jobs
            .iter()
            .flat_map(|j| j.texts.iter().map(String::as_str))
            .collect();
        let result = embedder.embed(&all);
        observer.batch(jobs.len(), all.len());
        drop(all);
        match result {
            Ok(vectors) => {
                let mut it = vectors.into_iter();
                for job in jobs {
                    let n = job.texts.len();
                    let mine: Vec<Vec<f32>> = it.by_ref().take(n).collect();
                    depth.fetch_sub(1, Ordering::Relaxed);
                    if mine.len() == n {
                        (job.reply)(Ok(mine));
                    } else {
                        (job.reply)(Err(Arc::new(EmbedError::Inference(
                            "the model returned fewer vectors than texts".into(),
                        ))));
                    }
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for job in jobs {
                    depth.fetch_sub(1, Ordering::Relaxed);
                    (job.reply)(Err(Arc::clone(&e)));
                }
            }
        }
    }
}

/// An [`Embedder`] whose every call goes through an [`EmbedQueue`] (and so shares batches
/// with every other caller). A full queue is reported as [`EmbedError::Inference`] naming it.
#[derive(Clone, Debug)]
pub struct QueuedEmbedder {
    queue: EmbedQueue,
}

impl Embedder for QueuedEmbedder {
    fn dim(&self) -> usize {
        self.queue.dim
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let owned = texts.iter().map(|t| (*t).to_owned()).collect();
        self.queue.embed_blocking(owned).map_err(|e| match e {
            QueueError::Embed(e) => e,
            QueueError::Full(waiting) => EmbedError::Overloaded { waiting },
            other => EmbedError::Inference(other.to_string()),
        })
    }

    fn count_tokens(&self, text: &str) -> Result<usize, EmbedError> {
        self.queue.counter.count_tokens(text)
    }

    fn max_tokens(&self) -> usize {
        self.queue.max_tokens
    }

    fn precision(&self) -> Precision {
        self.queue.precision
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A deterministic embedder recording batch sizes; slow enough for requests to pile up.
    struct Fake {
        batches: Mutex<Vec<usize>>,
    }
    impl Embedder for Fake {
        fn dim(&self) -> usize {
            2
        }
        fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
            self.batches.lock().map(|mut b| b.push(texts.len())).ok();
            std::thread::sleep(std::time::Duration::from_millis(30));
            Ok(texts.iter().map(|t| vec![t.len() as f32, 1.0]).collect())
        }
        fn count_tokens(&self, text: &str) -> Result<usize, EmbedError> {
            Ok(text.len())
        }
        fn max_tokens(&self) -> usize {
            256
        }
    }

    #[test]
    fn concurrent_requests_share_batches_and_get_their_own_vectors() {
        let fake = Arc::new(Fake {
            batches: Mutex::new(Vec::new()),
        });
        let q = EmbedQueue::start(fake.clone(), QueueOptions::default(), None).expect("thread");
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let text = "x".repeat(i + 1);
                    let v = q.embed_blocking(vec![text]).expect("embedded");
                    assert_eq!(v, vec![vec![(i + 1) as f32, 1.0]]);
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        let batches = fake.batches.lock().expect("lock").clone();
        assert_eq!(batches.iter().sum::<usize>(), 16);
        assert!(batches.len() < 16, "no batching happened: {batches:?}");
    }

    #[test]
    fn a_full_queue_is_refused_at_once() {
        let fake = Arc::new(Fake {
            batches: Mutex::new(Vec::new()),
        });
        let q = EmbedQueue::start(
            fake,
            QueueOptions {
                capacity: 1,
                max_batch_texts: 1,
            },
            None,
        )
        .expect("thread");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || q.embed_blocking(vec!["a".into()]))
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        assert!(results
            .iter()
            .any(|r| matches!(r, Err(QueueError::Full(1)))));
        assert!(results.iter().any(Result::is_ok));
    }
}
