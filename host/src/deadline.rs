//! Running a future by a deadline: the review's, which the policy, its host calls and the
//! store's reads all keep.

/// `future`'s output, unless `deadline` passes first. Outside a runtime (the CLI, benchmarks,
/// offline checks: callers with no deadline to keep) there is no timer, and it just runs.
pub async fn by_deadline<F: std::future::Future>(
    deadline: tokio::time::Instant,
    future: F,
) -> Option<F::Output> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::time::timeout_at(deadline, future).await.ok(),
        Err(_) => Some(future.await),
    }
}
