use super::*;

#[test]
fn expires_and_caps() {
    let t0 = 1_000_000;
    let mut s = RevokedSet::new(2, Duration::from_secs(10));
    s.add("a".into(), t0);
    s.add("b".into(), t0 + 1000);
    assert!(s.contains("a", t0 + 2000));
    assert_eq!(
        s.add("c".into(), t0 + 2000),
        vec!["a".to_owned()],
        "capped: oldest dropped"
    );
    assert!(!s.contains("a", t0 + 2000));
    assert!(!s.contains("b", t0 + 12_000), "expired");
    assert_eq!(s.purge(t0 + 11_000), vec!["b".to_owned()]);
    assert_eq!(s.ids(), vec!["c".to_owned()]);
}

#[test]
fn an_id_revoked_again_stays_listed_under_its_new_time() {
    let t0 = 1_000_000;
    let mut s = RevokedSet::new(10, Duration::from_secs(10));
    s.add("a".into(), t0);
    s.add("b".into(), t0 + 1000);
    s.add("a".into(), t0 + 2000);
    assert_eq!(s.ids(), vec!["b".to_owned(), "a".to_owned()]);
    assert_eq!(s.len(), 2);
    // Expiry follows the new time: `b` goes first, `a` 10 s after its second revoke.
    assert_eq!(s.purge(t0 + 11_000), vec!["b".to_owned()]);
    assert!(s.contains("a", t0 + 11_500));
    assert_eq!(s.purge(t0 + 12_000), vec!["a".to_owned()]);
    assert!(s.is_empty());
}

#[test]
fn restore_drops_expired_and_over_cap() {
    let now = 100_000_000;
    let records = vec![
        ("old".to_owned(), now - 20_000_000),
        ("b".to_owned(), now - 2000),
        ("a".to_owned(), now - 3000),
        ("c".to_owned(), now - 1000),
    ];
    let (set, stale) = restore(records, 2, Duration::from_secs(3600), now);
    assert_eq!(set.ids(), vec!["b".to_owned(), "c".to_owned()]);
    let mut stale = stale;
    stale.sort();
    assert_eq!(stale, vec!["a".to_owned(), "old".to_owned()]);
}

#[test]
fn lookup_stays_fast_with_100k_ids() {
    let mut s = RevokedSet::new(200_000, DEFAULT_EXPIRES);
    let now = now_ms();
    for i in 0..100_000 {
        s.add(format!("id-{i}"), now);
    }
    assert_eq!(s.len(), 100_000);
    assert!(s.contains("id-99999", now) && !s.contains("id-100000", now));
}

#[test]
fn parses_signal_names() {
    assert_eq!(parse_signal("term"), Ok(Signal::SIGTERM));
    assert_eq!(parse_signal("SIGUSR1"), Ok(Signal::SIGUSR1));
    assert_eq!(parse_signal("15"), Ok(Signal::SIGTERM));
    assert!(parse_signal("999").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revokes_survive_a_restart_with_a_statedb() {
    let dir = tempfile::tempdir().unwrap();
    let registry = RevokeRegistry {
        statedb: Some(dir.path().join("db")),
        ..Default::default()
    };
    let (peers, mut pool, mut scheduler) = recording_peers().await;
    let (actor, handle) = Actor::spawn(None, registry.clone(), peers.clone())
        .await
        .unwrap();
    assert!(registry.count.is_zero(), "nothing revoked yet");
    let ids = vec!["t1".to_owned(), "t2".to_owned()];
    ractor::call!(actor, |reply| RevokeMessage::Revoke {
        ids,
        terminate: None,
        reply: Some(reply)
    })
    .unwrap()
    .unwrap();
    assert!(is_revoked(&actor, "t1".to_owned()).await);
    assert!(!registry.count.is_zero(), "the consumer must ask now");
    // Passed on: to the pool (reserved and running requests) and the scheduler (held ones).
    match pool.recv().await {
        Some(PoolMessage::Work(WorkMsg::Revoked { ids, terminate })) => {
            assert!(ids.contains("t1") && ids.contains("t2") && terminate.is_none());
        }
        other => panic!("the pool was told {other:?}"),
    }
    match scheduler.recv().await {
        Some(SchedulerMessage::Revoked(ids)) => assert_eq!(ids.len(), 2),
        other => panic!("the scheduler was told {other:?}"),
    }
    actor.stop(None);
    handle.await.unwrap();
    let registry = RevokeRegistry {
        count: RevokedCount::default(),
        ..registry
    };
    let (actor, handle) = Actor::spawn(None, registry.clone(), peers).await.unwrap();
    assert!(
        !registry.count.is_zero(),
        "ids loaded from the statedb count"
    );
    assert!(is_revoked(&actor, "t2".to_owned()).await);
    assert!(!is_revoked(&actor, "t3".to_owned()).await);
    let mut ids = ractor::call!(actor, RevokeMessage::GetRevoked).unwrap();
    ids.sort();
    assert_eq!(ids, vec!["t1".to_owned(), "t2".to_owned()]);
    actor.stop(None);
    handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_statedb_path_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let registry = RevokeRegistry {
        statedb: Some(file),
        ..Default::default()
    };
    let (peers, _pool, _scheduler) = recording_peers().await;
    let err = Actor::spawn(None, registry, peers).await.unwrap_err();
    assert!(err.to_string().contains("cannot open the statedb"), "{err}");
}

async fn is_revoked(actor: &ActorRef<RevokeMessage>, id: String) -> bool {
    ractor::call!(actor, |reply| RevokeMessage::IsRevoked {
        id,
        stamps: Vec::new(),
        reply
    })
    .unwrap()
}

async fn recording_peers() -> (
    RevokePeers,
    tokio::sync::mpsc::UnboundedReceiver<PoolMessage>,
    tokio::sync::mpsc::UnboundedReceiver<SchedulerMessage>,
) {
    let (pool, pool_rx, _) = crate::testkit::recorder().await;
    let (scheduler, scheduler_rx, _) = crate::testkit::recorder().await;
    (RevokePeers { pool, scheduler }, pool_rx, scheduler_rx)
}
