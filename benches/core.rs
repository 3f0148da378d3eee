//! The in-process costs, without any I/O (criterion): what our code adds per
//! org and per rotation on top of the AWS calls (the end-to-end numbers on the
//! local stack come from scripts/bench.py).

use std::hint::black_box;

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use s3_key_rotation::config::Config;
use s3_key_rotation::core::domain::{KeyVersion, LeaseTime, OrgId, RotationPolicy, Trigger};
use s3_key_rotation::core::duration::Duration;
use s3_key_rotation::core::memory::MemoryWorld;
use s3_key_rotation::core::ports::IamKey;
use s3_key_rotation::core::rotation::{rotate, RotationRequest, RotationSettings};
use s3_key_rotation::core::sweep::{plan, sweep, SweepRequest, SweepSettings};

/// The sweep's settings as a deployment with the defaults has them.
fn settings() -> SweepSettings {
    let only_the_registry = |name: &str| (name == "REGISTRY_BUCKET").then(|| "registry".to_owned());
    Config::from_lookup(only_the_registry).expect("the defaults are valid").sweep_settings()
}

fn t0() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 4, 0, 0).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// `n` enrolled orgs with a key; every tenth is due for automatic rotation at t0 + 8d.
fn world(rt: &tokio::runtime::Runtime, n: usize) -> MemoryWorld {
    let world = MemoryWorld::new();
    rt.block_on(async {
        for i in 0..n {
            let org = OrgId::parse(&(1_000_000 + i).to_string()).unwrap();
            let mut record = world.enroll(&org, t0()).await;
            let key = s3_key_rotation::core::ports::AccessKeys::create_key(&world.keys, &record.user()).await.unwrap();
            record.current = Some(KeyVersion {
                version: 1,
                access_key_id: key.access_key_id,
                created_at: t0(),
                vault_version: None,
                expires_at: None,
            });
            if i % 10 == 0 {
                record.policy = RotationPolicy {
                    automatic: true,
                    interval: Some(Duration::from_days(7)),
                    last_rotation_at: Some(t0()),
                    next_rotation_at: Some(t0() + chrono::Duration::days(7)),
                };
            }
            world.registry.put(record);
        }
    });
    world
}

fn bench_plan(c: &mut Criterion) {
    let rt = runtime();
    let world = world(&rt, 10);
    let settings = settings();
    let now = t0() + chrono::Duration::days(8);
    let lease_now = LeaseTime::from_utc(Utc::now());
    for (name, org) in [("plan: nothing due", "1000001"), ("plan: rotation due", "1000000")] {
        let record = world.registry.get(&OrgId::parse(org).unwrap()).unwrap();
        let keys: Vec<IamKey> = world.keys.keys_of(&record.iam_user);
        c.bench_function(name, |b| {
            b.iter(|| plan(black_box(&record), Some(black_box(&keys)), None, black_box(now), lease_now, &settings))
        });
    }
}

fn bench_rotation(c: &mut Criterion) {
    let rt = runtime();
    let settings = RotationSettings { rotations_per_hour: u32::MAX, ..RotationSettings::default() };
    c.bench_function("rotate: whole protocol on in-memory ports", |b| {
        b.iter_batched(
            || world(&rt, 1),
            |world| {
                let request = RotationRequest {
                    org: OrgId::parse("1000000").unwrap(),
                    now: s3_key_rotation::core::domain::DecisionTime::from(t0() + chrono::Duration::days(1)),
                    trigger: Trigger::Api,
                    actor: "bench".into(),
                    rotation_id: uuid::Uuid::new_v4().to_string(),
                    request_id: None,
                    grace: None,
                };
                rt.block_on(rotate(world.ports(), &settings, &request)).unwrap()
            },
            BatchSize::SmallInput,
        )
    });
}

fn bench_sweep(c: &mut Criterion) {
    let rt = runtime();
    let settings = settings();
    let mut group = c.benchmark_group("sweep on in-memory ports");
    group.sample_size(10);
    group.bench_function("1000 orgs, 100 due", |b| {
        b.iter_batched(
            || world(&rt, 1000),
            |world| {
                let request = SweepRequest {
                    now: s3_key_rotation::core::domain::DecisionTime::from(t0() + chrono::Duration::days(8)),
                    dry_run: false,
                    deadline: None,
                    margin: std::time::Duration::ZERO,
                };
                let summary = rt.block_on(sweep(world.ports(), &settings, &request)).unwrap();
                assert_eq!(summary.rotated.len(), 100);
                summary
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn bench_duration(c: &mut Criterion) {
    c.bench_function("parse integer[unit] durations", |b| {
        b.iter(|| {
            for text in ["30d", "720h", "604800s", "365d"] {
                black_box(black_box(text).parse::<Duration>().unwrap());
            }
        })
    });
}

criterion_group!(benches, bench_plan, bench_rotation, bench_sweep, bench_duration);
criterion_main!(benches);
