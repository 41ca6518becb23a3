//! One conformance suite for every `EpisodicStore` backend: each case in `cases` runs against a
//! real SQLite file and a real Redis (our own `redis-server` on a free loopback port, or
//! `$REDIS_URL`).

use crate::support::redis as redis_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use memex::episodic::{
    EpisodeDraft, EpisodeId, EpisodicError, EpisodicStore, RedisEpisodicStore, RedisOptions,
    SearchQuery, SqliteEpisodicStore, SqliteOptions,
};
use memex::merchant::MerchantId;
use serde_json::json;

/// A store plus whatever must stay alive as long as it (temp dir, Redis server).
pub struct Fixture {
    pub store: Arc<dyn EpisodicStore>,
    _guard: Box<dyn std::any::Any + Send>,
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store =
        SqliteEpisodicStore::open(&dir.path().join("episodes.db"), SqliteOptions::default())
            .await
            .unwrap();
    Fixture {
        store: Arc::new(store),
        _guard: Box::new(dir),
    }
}

async fn redis() -> Fixture {
    let server = redis_support::RedisServer::start();
    // A fresh namespace per test keeps tests apart even on a shared $REDIS_URL.
    let opts = RedisOptions {
        namespace: format!("t{}", uuid::Uuid::new_v4().simple()),
        ..RedisOptions::default()
    };
    let store = RedisEpisodicStore::connect(&server.url(), opts)
        .await
        .unwrap();
    Fixture {
        store: Arc::new(store),
        _guard: Box::new(server),
    }
}

fn mid(s: &str) -> MerchantId {
    MerchantId::parse(s).unwrap()
}

/// A unit vector along axis `i` of `dim`, tilted slightly towards axis `j`.
fn axis(dim: usize, i: usize, j: usize, tilt: f32) -> Vec<f32> {
    let mut v = vec![0.0; dim];
    v[i] = 1.0;
    v[j] += tilt;
    v
}

mod cases {
    use super::*;

    pub async fn save_then_get_round_trips_everything(store: Arc<dyn EpisodicStore>) {
        let m = mid("MID001");
        let metadata = json!({
            "outcome": "resolved",
            "ticket": 4211,
            "amount": 12.5,
            "tags": ["payout", "délai", "日本"],
            "nested": {"ok": true, "none": null},
        });
        let saved = store
            .save(
                &m,
                EpisodeDraft::new(
                    "Merchant asked why payout 9912 was late — explained the 2-day hold. ✓",
                )
                .with_metadata(metadata.clone())
                .with_embedding(vec![3.0, 4.0, 0.0]),
            )
            .await
            .unwrap();
        assert_eq!(saved.merchant_id, m);
        assert_eq!(saved.metadata, metadata);
        let emb = saved.embedding.clone().unwrap();
        assert!(
            (emb[0] - 0.6).abs() < 1e-6 && (emb[1] - 0.8).abs() < 1e-6,
            "{emb:?}"
        );
        let age = chrono::Utc::now() - saved.created_at;
        assert!(
            age.num_seconds().abs() < 60,
            "created_at {} is not now",
            saved.created_at
        );

        let got = store
            .get(&m, saved.id)
            .await
            .unwrap()
            .expect("the episode exists");
        assert_eq!(got, saved);

        let plain = store
            .save(&m, EpisodeDraft::new("no vector"))
            .await
            .unwrap();
        let got = store.get(&m, plain.id).await.unwrap().unwrap();
        assert_eq!(got.embedding, None);
        assert_eq!(got.metadata, json!({}));

        let big = "é".repeat(30_000);
        let saved = store
            .save(&m, EpisodeDraft::new(big.clone()))
            .await
            .unwrap();
        assert_eq!(store.get(&m, saved.id).await.unwrap().unwrap().summary, big);

        assert_eq!(store.get(&m, EpisodeId::generate()).await.unwrap(), None);
        assert_eq!(store.count(&m).await.unwrap(), 3);
    }

    pub async fn invalid_drafts_are_rejected_and_store_nothing(store: Arc<dyn EpisodicStore>) {
        let m = mid("MID002");
        let bad = [
            EpisodeDraft::new(""),
            EpisodeDraft::new("   \n"),
            EpisodeDraft::new("x".repeat(memex::episodic::MAX_SUMMARY_BYTES + 1)),
            EpisodeDraft::new("ok").with_metadata(json!("a string")),
            EpisodeDraft::new("ok").with_metadata(json!([1, 2])),
            EpisodeDraft::new("ok").with_embedding(vec![]),
            EpisodeDraft::new("ok").with_embedding(vec![0.0; 4]),
            EpisodeDraft::new("ok").with_embedding(vec![1.0, f32::NAN]),
        ];
        for draft in bad {
            let err = store.save(&m, draft).await.unwrap_err();
            assert!(matches!(err, EpisodicError::InvalidInput(_)), "{err:?}");
            assert!(!err.to_string().is_empty());
        }
        assert_eq!(store.count(&m).await.unwrap(), 0);
        assert!(store.recent(&m, 10).await.unwrap().is_empty());
    }

    pub async fn recent_is_newest_first_and_stable(store: Arc<dyn EpisodicStore>) {
        let m = mid("MID003");
        let mut ids = Vec::new();
        // Back-to-back saves land within the same millisecond; order must still be exact.
        for i in 0..30 {
            let e = store
                .save(&m, EpisodeDraft::new(format!("episode {i}")))
                .await
                .unwrap();
            ids.push(e.id);
        }
        let recent = store.recent(&m, 10).await.unwrap();
        let got: Vec<EpisodeId> = recent.iter().map(|e| e.id).collect();
        let want: Vec<EpisodeId> = ids.iter().rev().take(10).copied().collect();
        assert_eq!(got, want);
        assert_eq!(recent[0].summary, "episode 29");
        for w in recent.windows(2) {
            assert!(
                w[0].created_at > w[1].created_at,
                "created_at not strictly decreasing"
            );
        }
        let all = store.recent(&m, 1000).await.unwrap();
        assert_eq!(all.len(), 30);
        assert_eq!(all.last().unwrap().id, ids[0]);
        assert_eq!(store.recent(&m, usize::MAX).await.unwrap(), all);
        assert_eq!(store.recent(&m, 0).await.unwrap(), vec![]);
        assert_eq!(store.recent(&mid("NOBODY"), 5).await.unwrap(), vec![]);
        // Reading twice gives the same order.
        assert_eq!(store.recent(&m, 1000).await.unwrap(), all);
    }

    pub async fn similar_ranks_by_cosine_within_the_merchant(store: Arc<dyn EpisodicStore>) {
        let m = mid("MID004");
        let dim = 8;
        let mut by_axis = Vec::new();
        for i in 0..6 {
            let e = store
                .save(
                    &m,
                    EpisodeDraft::new(format!("axis {i}")).with_embedding(axis(dim, i, 7, 0.1)),
                )
                .await
                .unwrap();
            by_axis.push(e.id);
        }
        store
            .save(&m, EpisodeDraft::new("no embedding"))
            .await
            .unwrap();
        // Another merchant has a perfect match that must never show up.
        let other = mid("MID004X");
        let intruder = store
            .save(
                &other,
                EpisodeDraft::new("intruder").with_embedding(axis(dim, 2, 3, 0.3)),
            )
            .await
            .unwrap();

        let query = axis(dim, 2, 3, 0.3);
        let hits = store.similar(&m, &query, 3).await.unwrap();
        assert_eq!(hits.len(), 3);
        assert_eq!(hits[0].episode.id, by_axis[2]);
        assert_eq!(hits[0].episode.summary, "axis 2");
        assert!(
            hits[0].score > 0.9 && hits[0].score <= 1.0,
            "{}",
            hits[0].score
        );
        assert_eq!(hits[1].episode.id, by_axis[3], "axis 3 shares the tilt");
        for w in hits.windows(2) {
            assert!(w[0].score >= w[1].score);
        }
        assert!(hits.iter().all(|h| h.episode.merchant_id == m));
        assert!(hits.iter().all(|h| h.episode.id != intruder.id));

        // Unnormalised queries give the same ranking and scores.
        let scaled: Vec<f32> = query.iter().map(|x| x * 42.0).collect();
        let again = store.similar(&m, &scaled, 3).await.unwrap();
        assert_eq!(
            again.iter().map(|h| h.episode.id).collect::<Vec<_>>(),
            hits.iter().map(|h| h.episode.id).collect::<Vec<_>>()
        );
        assert!((again[0].score - hits[0].score).abs() < 1e-5);

        let all = store.similar(&m, &query, 100).await.unwrap();
        assert_eq!(
            all.len(),
            6,
            "episodes without an embedding are not candidates"
        );
        assert!(store.similar(&m, &query, 0).await.unwrap().is_empty());
        assert!(store
            .similar(&mid("NOBODY"), &query, 5)
            .await
            .unwrap()
            .is_empty());

        let err = store.similar(&m, &vec![0.0; dim], 3).await.unwrap_err();
        assert!(matches!(err, EpisodicError::InvalidInput(_)), "{err:?}");
        let err = store.similar(&m, &[1.0, 0.0, 0.0], 3).await.unwrap_err();
        assert!(
            matches!(
                err,
                EpisodicError::DimensionMismatch {
                    expected: 3,
                    found: 8,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    pub async fn forget_erases_one_merchant_only(store: Arc<dyn EpisodicStore>) {
        let a = mid("MIDA");
        let b = mid("MIDB");
        let mut a_ids = Vec::new();
        for i in 0..5 {
            let e = store
                .save(
                    &a,
                    EpisodeDraft::new(format!("a{i}")).with_embedding(vec![1.0, i as f32]),
                )
                .await
                .unwrap();
            a_ids.push(e.id);
        }
        for i in 0..3 {
            store
                .save(
                    &b,
                    EpisodeDraft::new(format!("b{i}")).with_embedding(vec![1.0, i as f32]),
                )
                .await
                .unwrap();
        }
        assert_eq!(store.forget(&a).await.unwrap(), 5);
        assert_eq!(store.count(&a).await.unwrap(), 0);
        assert!(store.recent(&a, 10).await.unwrap().is_empty());
        assert!(store.similar(&a, &[1.0, 0.0], 10).await.unwrap().is_empty());
        for id in a_ids {
            assert_eq!(store.get(&a, id).await.unwrap(), None);
        }
        assert_eq!(store.count(&b).await.unwrap(), 3);
        assert_eq!(store.recent(&b, 10).await.unwrap().len(), 3);
        assert_eq!(store.forget(&a).await.unwrap(), 0);
        // The merchant can start over.
        store
            .save(&a, EpisodeDraft::new("fresh start"))
            .await
            .unwrap();
        assert_eq!(store.count(&a).await.unwrap(), 1);
    }

    pub async fn prune_removes_older_episodes_of_every_merchant(store: Arc<dyn EpisodicStore>) {
        let a = mid("MIDP1");
        let b = mid("MIDP2");
        let mut last_old = None;
        for (m, n) in [(&a, 3), (&b, 2)] {
            for i in 0..n {
                let e = store
                    .save(
                        m,
                        EpisodeDraft::new(format!("old {i}")).with_embedding(vec![1.0, 0.5]),
                    )
                    .await
                    .unwrap();
                last_old = Some(e.created_at);
            }
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut first_new = None;
        let mut new_ids = HashSet::new();
        for (m, n) in [(&a, 2), (&b, 1)] {
            for i in 0..n {
                let e = store
                    .save(
                        m,
                        EpisodeDraft::new(format!("new {i}")).with_embedding(vec![1.0, 0.5]),
                    )
                    .await
                    .unwrap();
                first_new.get_or_insert(e.created_at);
                new_ids.insert(e.id);
            }
        }
        let (last_old, first_new) = (last_old.unwrap(), first_new.unwrap());
        assert!(last_old < first_new);
        // The store's own clock decides; cut halfway between the two groups.
        let cutoff = last_old + (first_new - last_old) / 2;
        assert_eq!(store.prune(cutoff).await.unwrap(), 5);
        assert_eq!(store.count(&a).await.unwrap(), 2);
        assert_eq!(store.count(&b).await.unwrap(), 1);
        let left: HashSet<EpisodeId> = store
            .recent(&a, 10)
            .await
            .unwrap()
            .into_iter()
            .chain(store.recent(&b, 10).await.unwrap())
            .map(|e| e.id)
            .collect();
        assert_eq!(left, new_ids);
        assert_eq!(store.similar(&a, &[1.0, 0.5], 10).await.unwrap().len(), 2);
        assert_eq!(store.prune(cutoff).await.unwrap(), 0);
        let everything = first_new + chrono::Duration::days(1);
        assert_eq!(store.prune(everything).await.unwrap(), 3);
        assert_eq!(store.count(&a).await.unwrap(), 0);
    }

    pub async fn merchants_never_see_each_other(store: Arc<dyn EpisodicStore>) {
        // Ids that are prefixes, extensions or case variants of each other.
        let names = ["MID1", "MID10", "MID100", "mid1", "MID1-", "M", "MID1_0"];
        let mut own = Vec::new();
        for name in names {
            let m = mid(name);
            let e = store
                .save(
                    &m,
                    EpisodeDraft::new(format!("secret of {name}")).with_embedding(vec![1.0, 1.0]),
                )
                .await
                .unwrap();
            own.push((m, e));
        }
        for (m, e) in &own {
            let recent = store.recent(m, 100).await.unwrap();
            assert_eq!(recent.len(), 1, "{m} sees {} episodes", recent.len());
            assert_eq!(recent[0].id, e.id);
            assert_eq!(recent[0].summary, format!("secret of {m}"));
            let hits = store.similar(m, &[1.0, 1.0], 100).await.unwrap();
            assert_eq!(hits.len(), 1);
            assert_eq!(hits[0].episode.id, e.id);
            assert_eq!(store.count(m).await.unwrap(), 1);
            for (other, oe) in &own {
                if other != m {
                    assert_eq!(
                        store.get(m, oe.id).await.unwrap(),
                        None,
                        "{m} reads {other}'s episode"
                    );
                }
            }
        }
        assert_eq!(store.forget(&mid("MID1")).await.unwrap(), 1);
        for (m, _) in own.iter().skip(1) {
            assert_eq!(
                store.count(m).await.unwrap(),
                1,
                "forgetting MID1 touched {m}"
            );
        }
    }

    pub async fn hostile_merchant_ids_are_rejected(store: Arc<dyn EpisodicStore>) {
        let victim = mid("MID001");
        store
            .save(&victim, EpisodeDraft::new("victim's secret"))
            .await
            .unwrap();
        let long = "A".repeat(10 * 1024);
        let hostile = [
            "*",
            "..",
            "MID001:*",
            "MID001*",
            "a b",
            "",
            long.as_str(),
            "MID\u{0}01",
            "MID001\n",
            "\u{1b}[2J",
            "MÏD001",
            "商户",
            "MID001}",
            "{MID001}",
            "MID001/../x",
            "' OR 1=1 --",
            "MID%",
            "MID?",
            "MID[0]",
            " MID001",
            "MID001 ",
        ];
        for h in hostile {
            let err = MerchantId::parse(h).expect_err(h);
            let msg = err.to_string();
            assert!(
                msg.starts_with("merchant id "),
                "unclear error for {h:?}: {msg}"
            );
            assert!(
                msg.len() < 200,
                "error echoes the whole id: {} bytes",
                msg.len()
            );
            assert!(
                !msg.chars().any(|c| c.is_control()),
                "control char in {msg:?}"
            );
            let as_json = serde_json::to_string(h).unwrap();
            assert!(serde_json::from_str::<MerchantId>(&as_json).is_err());
        }
        // Valid near-misses of the victim see nothing of it.
        for near in [
            "MID00", "MID0011", "mid001", "MID001-", "MID001_", "MID0010",
        ] {
            let m = mid(near);
            assert!(store.recent(&m, 10).await.unwrap().is_empty(), "{near}");
            assert_eq!(store.count(&m).await.unwrap(), 0, "{near}");
            assert_eq!(store.forget(&m).await.unwrap(), 0, "{near}");
        }
        assert_eq!(store.count(&victim).await.unwrap(), 1);
    }

    pub async fn concurrent_saves_lose_and_duplicate_nothing(store: Arc<dyn EpisodicStore>) {
        let m = mid("MIDCONC");
        let mut tasks = Vec::new();
        for t in 0..8 {
            let store = Arc::clone(&store);
            let m = m.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::with_capacity(500);
                for i in 0..500 {
                    let e = store
                        .save(
                            &m,
                            EpisodeDraft::new(format!("task {t} save {i}"))
                                .with_metadata(json!({"task": t, "i": i}))
                                .with_embedding(vec![1.0, t as f32, i as f32]),
                        )
                        .await
                        .unwrap();
                    mine.push(e);
                }
                mine
            }));
        }
        let mut saved = Vec::new();
        for t in tasks {
            let mine = t.await.unwrap();
            // Each task's own saves are ordered by time.
            for w in mine.windows(2) {
                assert!(w[0].created_at < w[1].created_at);
            }
            saved.extend(mine);
        }
        assert_eq!(saved.len(), 4000);
        assert_eq!(store.count(&m).await.unwrap(), 4000);
        let stored = store.recent(&m, 10_000).await.unwrap();
        assert_eq!(stored.len(), 4000);
        let stored_ids: HashSet<EpisodeId> = stored.iter().map(|e| e.id).collect();
        assert_eq!(stored_ids.len(), 4000, "duplicate ids stored");
        let saved_ids: HashSet<EpisodeId> = saved.iter().map(|e| e.id).collect();
        assert_eq!(stored_ids, saved_ids);
        let summaries: HashSet<&str> = stored.iter().map(|e| e.summary.as_str()).collect();
        assert_eq!(summaries.len(), 4000, "a save was stored twice");
        for w in stored.windows(2) {
            assert!(
                w[0].created_at > w[1].created_at,
                "created_at not strictly monotone"
            );
        }
        assert_eq!(
            store
                .similar(&m, &[1.0, 0.0, 0.0], 5000)
                .await
                .unwrap()
                .len(),
            4000
        );
    }

    /// Hybrid search: an exact rare token is found by the keyword leg even when the query
    /// vector points elsewhere; results carry metadata, occurred_at and a score; the index
    /// follows writes.
    pub async fn hybrid_search_finds_an_exact_rare_token(store: Arc<dyn EpisodicStore>) {
        let m = mid("HYB");
        let dim = 8;
        let mut drafts = Vec::new();
        for i in 0..40 {
            drafts.push(
                EpisodeDraft::new(format!(
                    "routine payout question number {i} about settlement"
                ))
                .with_embedding(axis(dim, i % dim, (i + 1) % dim, 0.1)),
            );
        }
        drafts.push(
            EpisodeDraft::new("chargeback on order QX-77Z9 was disputed by the bank")
                .with_metadata(json!({"ticket": "T-9"}))
                .with_embedding(axis(dim, 7, 6, 0.1))
                .with_occurred_at("2024-03-05T10:00:00Z".parse().unwrap()),
        );
        assert_eq!(store.save_many(&m, drafts).await.unwrap(), 41);
        let q = SearchQuery::new("what happened with QX-77Z9?", Some(axis(dim, 0, 1, 0.0)), 3);
        let hits = store.search(&m, &q).await.unwrap();
        assert_eq!(hits.len(), 3);
        assert!(hits[0].episode.summary.contains("QX-77Z9"), "{:?}", hits[0]);
        assert_eq!(hits[0].episode.metadata, json!({"ticket": "T-9"}));
        assert_eq!(
            hits[0].episode.occurred_at.unwrap().to_rfc3339(),
            "2024-03-05T10:00:00+00:00"
        );
        assert!(hits[0].score > 0.0 && hits[0].score >= hits[1].score);
        // Keyword-only search works without a vector, and the dense leg alone ranks by cosine.
        let kw = SearchQuery::new("QX-77Z9", None, 1);
        assert!(store.search(&m, &kw).await.unwrap()[0]
            .episode
            .summary
            .contains("QX-77Z9"));
        let dense = SearchQuery::new("", Some(axis(dim, 7, 6, 0.1)), 1);
        assert!(store.search(&m, &dense).await.unwrap()[0]
            .episode
            .summary
            .contains("QX-77Z9"));
        // A new episode is searchable at once (the per-merchant index follows the version).
        store
            .save(
                &m,
                EpisodeDraft::new("fresh note mentioning WQ-1234")
                    .with_embedding(axis(dim, 3, 4, 0.1)),
            )
            .await
            .unwrap();
        let hits = store
            .search(&m, &SearchQuery::new("WQ-1234", None, 1))
            .await
            .unwrap();
        assert!(hits[0].episode.summary.contains("WQ-1234"));
        // ... and a forgotten one is gone at once.
        store.forget(&m).await.unwrap();
        assert!(store
            .search(&m, &SearchQuery::new("WQ-1234", None, 5))
            .await
            .unwrap()
            .is_empty());
        assert!(store
            .search(&m, &SearchQuery::new("x", None, 0))
            .await
            .unwrap()
            .is_empty());
        assert!(store
            .search(&m, &SearchQuery::new("x", Some(vec![0.0; dim]), 3))
            .await
            .is_err());
    }

    /// Hybrid search never crosses merchants, even for look-alike ids that share a token.
    pub async fn hybrid_search_is_isolated_between_merchants(store: Arc<dyn EpisodicStore>) {
        let ids = ["M1", "M1_", "m1", "M1-x", "M10"];
        for (i, id) in ids.iter().enumerate() {
            let m = mid(id);
            store
                .save(
                    &m,
                    EpisodeDraft::new(format!("secret SHAREDTOKEN of merchant {id}"))
                        .with_metadata(json!({"owner": id}))
                        .with_embedding(axis(4, i % 4, (i + 1) % 4, 0.2)),
                )
                .await
                .unwrap();
        }
        for (i, id) in ids.iter().enumerate() {
            let m = mid(id);
            let q = SearchQuery::new(
                "SHAREDTOKEN secret merchant",
                Some(axis(4, i % 4, 0, 0.0)),
                10,
            );
            let hits = store.search(&m, &q).await.unwrap();
            assert_eq!(hits.len(), 1, "{id}: {hits:?}");
            assert_eq!(hits[0].episode.metadata["owner"], json!(id));
            assert_eq!(hits[0].episode.merchant_id, m);
        }
        for bad in ["M1:*", "M1}", "{M1", "M1 ", "*", "M1\n"] {
            assert!(MerchantId::parse(bad).is_err(), "{bad:?} must be rejected");
        }
        assert!(store
            .search(&mid("NOBODY"), &SearchQuery::new("SHAREDTOKEN", None, 5))
            .await
            .unwrap()
            .is_empty());
    }

    /// `speakers` lists the merchant's string `metadata.speaker` values (others ignored, no
    /// other merchant's), and a query naming one of them, or giving a date, ranks the
    /// matching episodes first on both backends alike.
    pub async fn speaker_and_date_hints_rank_matching_episodes_first(
        store: Arc<dyn EpisodicStore>,
    ) {
        let m = mid("HINTS");
        let at = |d: &str| {
            chrono::DateTime::parse_from_rfc3339(d)
                .unwrap()
                .with_timezone(&chrono::Utc)
        };
        let rows = [
            (
                "Ana",
                "2024-03-01T10:00:00Z",
                "refund for the blue shoes arrived late late",
            ),
            (
                "Ben",
                "2024-03-15T10:00:00Z",
                "refund for the red shoes arrived late late late",
            ),
            ("Ana", "2024-04-02T10:00:00Z", "refund for the shoes"),
        ];
        for (i, (who, when, text)) in rows.iter().enumerate() {
            store
                .save(
                    &m,
                    EpisodeDraft::new(*text)
                        .with_metadata(json!({"speaker": who, "n": i}))
                        .with_occurred_at(at(when)),
                )
                .await
                .unwrap();
        }
        // Metadata whose speaker is not a string names nobody.
        store
            .save(
                &m,
                EpisodeDraft::new("refund note").with_metadata(json!({"speaker": 7})),
            )
            .await
            .unwrap();
        store
            .save(
                &mid("HINTS2"),
                EpisodeDraft::new("refund shoes").with_metadata(json!({"speaker": "Zed"})),
            )
            .await
            .unwrap();
        assert_eq!(
            store.speakers(&m).await.unwrap(),
            vec!["Ana".to_owned(), "Ben".to_owned()]
        );
        assert!(store.speakers(&mid("NOBODY")).await.unwrap().is_empty());
        let first = |hits: &[memex::episodic::ScoredEpisode]| hits[0].episode.metadata["n"].clone();
        let search = |q: &str| {
            let store = Arc::clone(&store);
            let m = m.clone();
            let q = q.to_owned();
            async move {
                store
                    .search(&m, &SearchQuery::new(q, None, 4))
                    .await
                    .unwrap()
            }
        };
        assert_eq!(first(&search("shoes refund late").await), json!(1));
        assert_eq!(
            first(&search("what did ana say: shoes refund late").await),
            json!(0)
        );
        assert_eq!(first(&search("shoes refund in April 2024").await), json!(2));
        assert_eq!(
            first(&search("Ana's shoes refund on 2 April, 2024").await),
            json!(2)
        );
        let hits = search("Ana shoes refund late").await;
        assert!(
            hits.windows(2).all(|w| w[0].score >= w[1].score),
            "{hits:?}"
        );
        assert!(hits.iter().all(|h| h.episode.merchant_id == m));
    }

    /// Keyed drafts are idempotent: saving them again stores nothing new.
    pub async fn keyed_saves_are_idempotent(store: Arc<dyn EpisodicStore>) {
        let m = mid("KEYED");
        let drafts = |n: usize| -> Vec<EpisodeDraft> {
            (0..n)
                .map(|i| EpisodeDraft::new(format!("line {i}")).with_key(format!("import:{i}")))
                .collect()
        };
        assert_eq!(store.save_many(&m, drafts(3)).await.unwrap(), 3);
        assert_eq!(store.save_many(&m, drafts(5)).await.unwrap(), 2);
        assert_eq!(store.count(&m).await.unwrap(), 5);
        let again = store
            .save(&m, EpisodeDraft::new("line 1").with_key("import:1"))
            .await
            .unwrap();
        assert_eq!(again.id, EpisodeId::derive(&m, "import:1"));
        assert_eq!(store.count(&m).await.unwrap(), 5);
        // The same key under another merchant is another episode.
        assert_eq!(store.save_many(&mid("KEYED2"), drafts(1)).await.unwrap(), 1);
        // An invalid draft in a batch stores nothing.
        let mut bad = drafts(7);
        bad.push(EpisodeDraft::new(" "));
        assert!(store.save_many(&m, bad).await.is_err());
        assert_eq!(store.count(&m).await.unwrap(), 5);
    }

    /// `recent` orders by occurred_at when present; `forget_before` removes by it.
    pub async fn recent_orders_by_occurred_at(store: Arc<dyn EpisodicStore>) {
        let m = mid("WHEN");
        let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
        for (summary, when) in [
            ("middle", "2023-06-01T00:00:00Z"),
            ("oldest", "2021-01-01T00:00:00Z"),
            ("newest", "2024-12-31T00:00:00Z"),
            ("tie-first-saved", "2022-02-02T00:00:00Z"),
            ("tie-second-saved", "2022-02-02T00:00:00Z"),
        ] {
            store
                .save(&m, EpisodeDraft::new(summary).with_occurred_at(at(when)))
                .await
                .unwrap();
        }
        let order: Vec<String> = store
            .recent(&m, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.summary)
            .collect();
        assert_eq!(
            order,
            [
                "newest",
                "middle",
                "tie-second-saved",
                "tie-first-saved",
                "oldest"
            ]
        );
        let top2: Vec<String> = store
            .recent(&m, 3)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.summary)
            .collect();
        assert_eq!(top2, ["newest", "middle", "tie-second-saved"]);
        let other = mid("WHEN2");
        store
            .save(
                &other,
                EpisodeDraft::new("old elsewhere").with_occurred_at(at("2020-01-01T00:00:00Z")),
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .forget_before(&m, at("2023-01-01T00:00:00Z"))
                .await
                .unwrap(),
            3
        );
        let left: Vec<String> = store
            .recent(&m, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.summary)
            .collect();
        assert_eq!(left, ["newest", "middle"]);
        assert_eq!(store.count(&other).await.unwrap(), 1);
        assert_eq!(
            store
                .forget_before(&m, at("2023-01-01T00:00:00Z"))
                .await
                .unwrap(),
            0
        );
    }
}

/// Runs every case of `cases` against one backend fixture.
macro_rules! conformance_suite {
    ($backend:ident, $fixture:path, [$($case:ident),* $(,)?]) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let f = $fixture().await;
                    cases::$case(Arc::clone(&f.store)).await;
                    // Leave a shared $REDIS_URL clean: prune everything in this namespace.
                    let later = chrono::Utc::now() + chrono::Duration::days(1);
                    f.store.prune(later).await.unwrap();
                    assert_eq!(f.store.prune(later).await.unwrap(), 0);
                }
            )*
        }
    };
}

macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {
        conformance_suite!(sqlite_backend, sqlite, [$($case),*]);
        conformance_suite!(redis_backend, redis, [$($case),*]);
    };
}

both_backends!(
    save_then_get_round_trips_everything,
    invalid_drafts_are_rejected_and_store_nothing,
    recent_is_newest_first_and_stable,
    similar_ranks_by_cosine_within_the_merchant,
    forget_erases_one_merchant_only,
    prune_removes_older_episodes_of_every_merchant,
    merchants_never_see_each_other,
    hostile_merchant_ids_are_rejected,
    concurrent_saves_lose_and_duplicate_nothing,
    hybrid_search_finds_an_exact_rare_token,
    hybrid_search_is_isolated_between_merchants,
    keyed_saves_are_idempotent,
    recent_orders_by_occurred_at,
    speaker_and_date_hints_rank_matching_episodes_first,
);
