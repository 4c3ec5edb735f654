//! The asyncio side of the API: awaitables on the process's one tokio runtime, which
//! pyo3-async-runtimes shares (set once at module init), so async and blocking calls use the
//! same engines, masters and concurrency limits.
//!
//! Shape of a call ([`spawn`]): the engine work runs as its own tokio task, which owns it to
//! the end (it starts at the call, as `loop.run_in_executor` does; the method returns a
//! coroutine awaiting it). asyncio awaits, through pyo3-async-runtimes' bridge, a small wrapper
//! future that relays progress to the event loop and finally builds the result there.
//! pyo3-async-runtimes cancels by dropping the future it was given, so cancelling the awaiting
//! task (or `asyncio.wait_for` timing out) drops the wrapper, and its drop flips the work's
//! cancel watch: the work task then kills the remote commands exactly as a timeout or Ctrl-C
//! does, in the background, and other calls are untouched.
//!
//! Everything that runs Python (progress callbacks, `logging`, building the result) is
//! scheduled on the loop's thread with `call_soon_threadsafe`, in the caller's contextvars
//! context, in the order the engine produced it. The tokio side takes the GIL only to schedule
//! that, on a blocking-pool thread (never a worker, which would stall the engines), and never
//! while waiting.

use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule};
use pyo3_async_runtimes::TaskLocals;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::errors::{classes, guard};
use super::ssh::{LOGGER, deliver};
use crate::ssh::Event;
use crate::ssh::runtime::runtime;

/// Hand the blocking API's runtime to pyo3-async-runtimes, before any awaitable exists (it
/// would otherwise build a second runtime of its own on first use).
pub(crate) fn init() {
    // Err only when it is already set: a second initialisation of the module in this process.
    let _ = pyo3_async_runtimes::tokio::init_with_runtime(runtime());
}

/// The async calls of a cluster (or of the process). `close()` and `__aexit__` wait for those
/// of their cluster that were cancelled and are still killing their remote commands (the kills
/// need its connections), and the interpreter's exit for all of them (the kills would die with
/// the process), each bounded by the latest deadline of the calls waited for.
pub(crate) struct Calls {
    /// How many cancelled calls are still stopping, and until when they may take.
    stopping: watch::Sender<(usize, Option<Instant>)>,
    /// The calls in flight. asyncio runs a cancelled future's done callbacks (which lead to the
    /// wrapper's drop) on a later turn of the loop, so a `close()` right after `task.cancel()`
    /// finds the call's awaitable cancelled but the call not yet told: see
    /// [`Calls::cancel_abandoned`].
    live: Mutex<Vec<Weak<Shared>>>,
}

impl Calls {
    pub(crate) fn new() -> Arc<Calls> {
        Arc::new(Calls {
            stopping: watch::channel((0, None)).0,
            live: Mutex::new(Vec::new()),
        })
    }

    fn register(&self, call: &Arc<Shared>) {
        if let Ok(mut live) = self.live.lock() {
            live.retain(|c| c.strong_count() > 0);
            live.push(Arc::downgrade(call));
        }
    }

    fn begin(&self, grace: Duration) {
        let until = Instant::now() + grace;
        self.stopping.send_modify(|(n, d)| {
            *n += 1;
            *d = Some(d.map_or(until, |d| d.max(until)));
        });
    }

    fn end(&self) {
        self.stopping.send_modify(|(n, d)| {
            *n = n.saturating_sub(1);
            if *n == 0 {
                *d = None;
            }
        });
    }

    /// Cancel at once the calls whose awaitable was cancelled (on the loop's thread, before
    /// waiting for them to stop).
    pub(crate) fn cancel_abandoned(&self, py: Python<'_>) {
        let calls: Vec<Arc<Shared>> = match self.live.lock() {
            Ok(live) => live.iter().filter_map(Weak::upgrade).collect(),
            Err(_) => return,
        };
        for call in calls {
            let cancelled = call.future.get().is_some_and(|f| {
                f.bind(py)
                    .call_method0("cancelled")
                    .and_then(|c| c.is_truthy())
                    .unwrap_or(false)
            });
            if cancelled {
                call.cancel();
            }
        }
    }

    /// Resolves once no cancelled call is still stopping, or at the deadline.
    pub(crate) async fn settled(&self) {
        let mut rx = self.stopping.subscribe();
        loop {
            let (n, deadline) = *rx.borrow_and_update();
            let Some(deadline) = deadline.filter(|_| n > 0) else {
                return;
            };
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

/// Every async call of the process, for the interpreter's exit.
static ALL_CALLS: LazyLock<Arc<Calls>> = LazyLock::new(Calls::new);

/// Registered with `atexit`: a program that ends right after a cancellation (an
/// `asyncio.wait_for` timeout in its last step) lets the remote commands be killed first.
#[pyfunction]
pub(crate) fn _settle_cancelled(py: Python<'_>) {
    ALL_CALLS.cancel_abandoned(py);
    py.detach(|| runtime().block_on(ALL_CALLS.settled()));
}

/// A Python callable that runs a Rust closure once, on whichever thread calls it (the loop's).
#[pyclass(frozen, module = "cvs_core", name = "_OnLoop")]
struct OnLoop(Mutex<Option<OnLoopFn>>);

type OnLoopFn = Box<dyn FnOnce(Python<'_>) + Send>;

#[pymethods]
impl OnLoop {
    fn __call__(&self, py: Python<'_>) {
        let f = self.0.lock().ok().and_then(|mut f| f.take());
        if let Some(f) = f {
            f(py);
        }
    }
}

/// What a call keeps of its caller: the loop and context to run Python in, the progress
/// callback and the logger.
struct LoopSide {
    locals: TaskLocals,
    progress: Option<Py<PyAny>>,
    logger: Py<PyAny>,
    debug: bool,
    /// The first exception a progress callback raised: the call is cancelled and raises it.
    raised: Mutex<Option<PyErr>>,
    cancel: watch::Sender<bool>,
}

impl LoopSide {
    /// Deliver progress events (on the loop's thread). After a callback error the callback is
    /// not called again, as in the blocking API.
    fn deliver(&self, py: Python<'_>, batch: &[Event]) {
        if batch.is_empty() {
            return;
        }
        let failed = self.raised.lock().map(|r| r.is_some()).unwrap_or(true);
        let cb = self
            .progress
            .as_ref()
            .filter(|_| !failed)
            .map(|p| p.bind(py));
        if let Err(e) = deliver(batch, cb, self.logger.bind(py), self.debug)
            && let Ok(mut raised) = self.raised.lock()
            && raised.is_none()
        {
            *raised = Some(e);
            let _ = self.cancel.send(true);
        }
    }

    fn take_raised(&self) -> Option<PyErr> {
        self.raised.lock().ok().and_then(|mut r| r.take())
    }
}

/// Schedule `f` on the caller's loop thread (it runs after everything scheduled before it).
/// Fails when the loop is closed.
async fn on_loop(side: &Arc<LoopSide>, f: OnLoopFn) -> PyResult<()> {
    let side = side.clone();
    tokio::task::spawn_blocking(move || {
        Python::attach(|py| {
            let cb = Py::new(py, OnLoop(Mutex::new(Some(f))))?;
            let kw = PyDict::new(py);
            kw.set_item("context", side.locals.context(py))?;
            side.locals
                .event_loop(py)
                .call_method("call_soon_threadsafe", (cb,), Some(&kw))?;
            Ok(())
        })
    })
    .await
    .unwrap_or_else(|e| {
        Err(PyRuntimeError::new_err(format!(
            "cannot reach the loop: {e}"
        )))
    })
}

/// Log `message` at `level` on the loop's thread, if the loop still runs.
fn log_on_loop(side: &Arc<LoopSide>, level: &'static str, message: String) -> OnLoopFn {
    let side = side.clone();
    Box::new(move |py| {
        let _ = side
            .logger
            .bind(py)
            .call_method1(level, (message.as_str(),));
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// The awaiting side went away first: the work is stopping in the background.
    Cancelled,
    Done,
}

/// What the awaited wrapper, the work task and the registries share.
struct Shared {
    side: Arc<LoopSide>,
    state: Mutex<State>,
    /// The cluster's and the process's registries.
    calls: [Arc<Calls>; 2],
    grace: Duration,
    /// The asyncio future handed to the caller.
    future: OnceLock<Py<PyAny>>,
}

impl Shared {
    /// The asyncio side gave up on the call: stop the work (in the background).
    fn cancel(&self) {
        if let Ok(mut state) = self.state.lock()
            && *state == State::Running
        {
            *state = State::Cancelled;
            for c in &self.calls {
                c.begin(self.grace);
            }
        }
        let _ = self.side.cancel.send(true);
    }
}

/// Dropped with the wrapper future: unless the call completed, the asyncio side cancelled it.
struct CancelOnDrop {
    shared: Arc<Shared>,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.shared.cancel();
        }
    }
}

/// How a call of [`spawn`] ends on the loop thread: the Python result of the work's output.
pub(crate) type Finish<T> = Box<dyn FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send>;

/// What to log (level, message) when a call cancelled from asyncio has finished stopping.
pub(crate) type AfterCancel<T> = Box<dyn FnOnce(&T) -> Option<(&'static str, String)> + Send>;

/// The asyncio awaitable of one call. `work` gets the progress sink (None when nobody listens)
/// and the cancel watch; it is spawned at once and owns the work to its end. `finish` builds
/// the result on the loop's thread. The call is registered in `calls` (its cluster's); once
/// cancelled it may take `grace` to stop its remote work (what `close()` and the interpreter's
/// exit wait for at most).
pub(crate) fn spawn<'py, T, W>(
    py: Python<'py>,
    progress: Option<&Bound<'py, PyAny>>,
    calls: &Arc<Calls>,
    grace: Duration,
    work: impl FnOnce(Option<mpsc::UnboundedSender<Event>>, watch::Receiver<bool>) -> W,
    finish: Finish<T>,
    after_cancel: AfterCancel<T>,
) -> PyResult<Bound<'py, PyAny>>
where
    T: Send + 'static,
    W: Future<Output = T> + Send + 'static,
{
    let locals = pyo3_async_runtimes::tokio::get_current_locals(py)?;
    let logger = py.import("logging")?.call_method1("getLogger", (LOGGER,))?;
    let debug = logger
        .call_method1("isEnabledFor", (10,))
        .and_then(|v| v.extract::<bool>())
        .unwrap_or(false);
    let progress = progress
        .filter(|p| !p.is_none())
        .map(|p| p.clone().unbind());
    // No listener, no events: the common case costs no trip to the loop per host.
    let (events, mut ev_rx) = if debug || progress.is_some() {
        let (tx, rx) = mpsc::unbounded_channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (cancel, cancel_rx) = watch::channel(false);
    let side = Arc::new(LoopSide {
        locals: locals.clone(),
        progress,
        logger: logger.unbind(),
        debug,
        raised: Mutex::new(None),
        cancel,
    });
    let shared = Arc::new(Shared {
        side: side.clone(),
        state: Mutex::new(State::Running),
        calls: [calls.clone(), ALL_CALLS.clone()],
        grace,
        future: OnceLock::new(),
    });
    for c in &shared.calls {
        c.register(&shared);
    }
    let registered = shared.clone();
    let fut = work(events, cancel_rx);
    let mut task = {
        let shared = shared.clone();
        runtime().spawn(async move {
            let out = fut.await;
            let cancelled = match shared.state.lock() {
                Ok(mut state) => std::mem::replace(&mut *state, State::Done) == State::Cancelled,
                Err(_) => false,
            };
            if cancelled {
                if let Some((level, message)) = after_cancel(&out) {
                    let log = log_on_loop(&shared.side, level, message);
                    let _ = on_loop(&shared.side, log).await;
                }
                for c in &shared.calls {
                    c.end();
                }
            }
            out
        })
    };
    // Made before the wrapper and moved into it, so even a wrapper dropped before its first
    // poll cancels the work.
    let armed = CancelOnDrop {
        shared,
        armed: true,
    };
    let wrapper = async move {
        let mut armed = armed;
        let joined = loop {
            let Some(rx) = ev_rx.as_mut() else {
                break (&mut task).await;
            };
            tokio::select! {
                joined = &mut task => break joined,
                ev = rx.recv() => match ev {
                    Some(ev) => {
                        // Whatever arrived meanwhile goes in the same trip to the loop.
                        let mut batch = vec![ev];
                        while let Ok(ev) = rx.try_recv() {
                            batch.push(ev);
                        }
                        let s = side.clone();
                        on_loop(&side, Box::new(move |py| s.deliver(py, &batch))).await?;
                    }
                    None => ev_rx = None,
                },
            }
        };
        let mut rest = Vec::new();
        if let Some(rx) = ev_rx.as_mut() {
            while let Ok(ev) = rx.try_recv() {
                rest.push(ev);
            }
        }
        // The result is built on the loop after the last events, so a callback has seen every
        // event before the await returns, and a callback's exception is what it raises.
        let (tx, rx) = oneshot::channel();
        let s = side.clone();
        on_loop(
            &side,
            Box::new(move |py| {
                s.deliver(py, &rest);
                let result = match (s.take_raised(), joined) {
                    (Some(e), _) => Err(e),
                    (None, Ok(out)) => guard(py, || finish(py, out)),
                    (None, Err(e)) => Err(internal(py, &e.to_string())),
                };
                let _ = tx.send(result);
            }),
        )
        .await?;
        let result = rx.await.unwrap_or_else(|_| {
            Err(PyRuntimeError::new_err(
                "the event loop closed before the call completed",
            ))
        });
        armed.armed = false;
        result
    };
    let fut = pyo3_async_runtimes::tokio::future_into_py_with_locals(py, locals, wrapper)?;
    let _ = registered.future.set(fut.clone().unbind());
    coroutine(fut)
}

/// `async def` of the methods: a coroutine awaiting `fut`, so the result can be given to
/// `asyncio.create_task` and `TaskGroup.create_task` (which take only coroutines) as well as
/// awaited. Cancelling the task cancels `fut`, which is what the call listens to.
fn coroutine(fut: Bound<'_, PyAny>) -> PyResult<Bound<'_, PyAny>> {
    static AWAIT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = fut.py();
    let wrap = AWAIT.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        let code = c"async def call(fut):\n    return await fut\n";
        let m = PyModule::from_code(py, code, c"<cvs_core async call>", c"cvs_core._aio")?;
        Ok(m.getattr("call")?.unbind())
    })?;
    wrap.bind(py).call1((fut,))
}

fn internal(py: Python<'_>, detail: &str) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let c = classes(py)?;
        let v = c
            .internal_error
            .bind(py)
            .call1((format!("internal error in cvs_core: {detail}"),))?;
        Ok(PyErr::from_value(v))
    };
    build().unwrap_or_else(|e| e)
}

/// An awaitable that is already done with `value` (`__aenter__`).
pub(crate) fn ready<'py>(py: Python<'py>, value: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let fut = pyo3_async_runtimes::get_running_loop(py)?.call_method0("create_future")?;
    fut.call_method1("set_result", (value,))?;
    Ok(fut)
}

/// A coroutine that raises `err` when awaited: an invalid argument fails the await, as in an
/// `async def`, so it never escapes while the caller is still building a `gather(...)`.
pub(crate) fn failed(py: Python<'_>, err: PyErr) -> PyResult<Bound<'_, PyAny>> {
    let fut = pyo3_async_runtimes::get_running_loop(py)?.call_method0("create_future")?;
    fut.call_method1("set_exception", (err.into_value(py),))?;
    coroutine(fut)
}

/// An awaitable of `fut`'s output run as its own task: cancelling the await leaves it running
/// (used for `close`, which must not stop halfway).
pub(crate) fn detached<'py, T>(
    py: Python<'py>,
    fut: impl Future<Output = T> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>>
where
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let task = runtime().spawn(fut);
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        task.await
            .map_err(|e| PyRuntimeError::new_err(format!("internal error in cvs_core: {e}")))
    })
}
