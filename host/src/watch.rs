//! "Something may have changed": file events in a set of directories, a periodic poll as the
//! fallback, and optionally SIGHUP. Directory events also catch the `..data` symlink swap with
//! which kubelet updates ConfigMap and Secret volumes, which a watch on the file itself misses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

/// Files change in several steps; let them settle before anyone reads them.
const SETTLE: Duration = Duration::from_millis(200);

/// Wakes its owner on changes. Dropping it stops the file watch.
pub struct Changes {
    woken: mpsc::Receiver<()>,
    poll: tokio::time::Interval,
    hangups: Option<Hangups>,
    _watcher: Option<notify::RecommendedWatcher>,
}

#[cfg(unix)]
type Hangups = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangups = std::future::Pending<()>;

impl Changes {
    /// Watches the directories of `files` and ticks every `poll`.
    pub fn new(files: &[&Path], poll: Duration) -> Self {
        let (wake, woken) = mpsc::channel(1);
        let mut dirs: Vec<PathBuf> = files.iter().map(|file| parent_dir(file)).collect();
        dirs.dedup();
        let mut poll = tokio::time::interval(poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Self {
            _watcher: watch(&dirs, wake),
            woken,
            poll,
            hangups: None,
        }
    }

    /// Also wakes on SIGHUP.
    pub fn on_hangup(mut self) -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            self.hangups = signal(SignalKind::hangup()).ok();
        }
        self
    }

    /// Waits for the next event, SIGHUP or poll tick.
    pub async fn next(&mut self) {
        tokio::select! {
            Some(()) = self.woken.recv() => tokio::time::sleep(SETTLE).await,
            Some(()) = hangup(&mut self.hangups) => tracing::info!("SIGHUP: reloading"),
            _ = self.poll.tick() => {}
        }
        while self.woken.try_recv().is_ok() {}
    }
}

async fn hangup(hangups: &mut Option<Hangups>) -> Option<()> {
    match hangups {
        #[cfg(unix)]
        Some(hangups) => hangups.recv().await,
        #[cfg(not(unix))]
        Some(hangups) => Some(hangups.await),
        None => std::future::pending().await,
    }
}

fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn watch(dirs: &[PathBuf], wake: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    if dirs.is_empty() {
        return None;
    }
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = wake.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch files; polling only");
            return None;
        }
    };
    for dir in dirs {
        if let Err(err) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot watch; polling only");
        }
    }
    Some(watcher)
}
