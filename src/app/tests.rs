#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;

use super::*;
use crate::listen::ListenAddr;

/// Records, at each `swapped`, the revision the handle held at that moment.
struct SeesTheHandle {
    handle: PolicyHandle,
    seen: Mutex<Vec<Option<u64>>>,
}

impl ReloadObserver for SeesTheHandle {
    fn swapped(&self, policy: &Policy, _source: &str, _compile_time: Duration) {
        let stored = self.handle.load().as_ref().map(|p| p.revision());
        assert_eq!(stored, Some(policy.revision()));
        self.seen.lock().unwrap().push(stored);
    }
}

#[test]
fn the_embedded_bundle_is_stored_before_observers_hear_of_it() {
    let handle: PolicyHandle = Arc::new(arc_swap::ArcSwapOption::empty());
    let observer = SeesTheHandle {
        handle: Arc::clone(&handle),
        seen: Mutex::new(Vec::new()),
    };
    install_embedded(&handle, &observer);
    let embedded = Policy::from_yaml_str(EMBEDDED_BUNDLE_NAME, EMBEDDED_BUNDLE).unwrap();
    assert_eq!(
        *observer.seen.lock().unwrap(),
        [Some(embedded.revision())],
        "told exactly once, with the bundle already in force"
    );
}

#[tokio::test]
async fn serve_runs_a_plan_until_shutdown_and_removes_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("wardgate.sock");
    let plan = ServePlan::new(ListenAddr::Unix(socket.clone()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(serve(plan, async {
        let _ = stopped.await;
    }));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "socket never bound");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("drains in time")
        .expect("serve task");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        !socket.exists(),
        "the socket file is removed on the way out"
    );
}

#[tokio::test]
async fn an_admin_address_in_use_refuses_to_start_and_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let socket = dir.path().join("wardgate.sock");
    let mut plan = ServePlan::new(ListenAddr::Unix(socket.clone()));
    plan.admin = AdminAddr::Listen(ListenAddr::Tcp(taken.local_addr().unwrap()));
    let result = tokio::time::timeout(Duration::from_secs(10), serve(plan, std::future::pending()))
        .await
        .expect("returns without a shutdown signal");
    let err = result.expect_err("the admin address is taken");
    assert!(matches!(err, AppError::Admin { .. }), "{err:?}");
    assert!(err.before_serving());
    assert!(err.to_string().starts_with("--admin "), "{err}");
    assert!(!socket.exists(), "the gRPC listener never started");
}
