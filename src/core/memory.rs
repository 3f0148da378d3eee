//! In-memory implementations of the ports, for tests: they behave like the
//! real services where it matters (conditional writes, IAM's 2-key quota)
//! and can fail or "crash" at a chosen step, which a real endpoint cannot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::domain::{IamUser, OrgId, OrgRecord};
use super::ports::{
    AccessKeys, AuditEntry, AuditLog, IamKey, KeyVault, KeyVerifier, NewKey, Notification, Notifier, PortError,
    Registry, UserSpec, Versioned,
};

/// How an injected fault behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// The chosen call fails; later calls work (a transient AWS error).
    Fail,
    /// The chosen call and every call after it fail, as if the process died
    /// there: no clean-up code reaches the services any more.
    Crash,
}

/// Counts every call to every in-memory service, and fails the chosen one.
#[derive(Debug, Default)]
pub struct Faults {
    /// Every call takes this long (on tokio's clock, so paused time can skip it).
    delay: Mutex<Option<std::time::Duration>>,
    calls: AtomicUsize,
    plan: Mutex<Option<(usize, FaultMode)>>,
    log: Mutex<Vec<&'static str>>,
}

impl Faults {
    /// Fail the `nth` call (1-based) from now on, in the given mode.
    pub fn inject(&self, nth: usize, mode: FaultMode) {
        let base = self.calls.load(Ordering::SeqCst);
        *lock(&self.plan) = Some((base + nth, mode));
    }
    pub fn clear(&self) {
        *lock(&self.plan) = None;
    }
    /// Makes every later call take `delay`.
    pub fn set_delay(&self, delay: std::time::Duration) {
        *lock(&self.delay) = Some(delay);
    }
    /// Calls made so far, by name (`iam.create_key`, `registry.update`, …).
    pub fn calls(&self) -> Vec<&'static str> {
        lock(&self.log).clone()
    }
    pub fn call_count(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn step(&self, operation: &'static str) -> Result<(), PortError> {
        // Let concurrent tasks interleave at every call, as real I/O would.
        tokio::task::yield_now().await;
        let delay = *lock(&self.delay);
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        lock(&self.log).push(operation);
        let fail = match *lock(&self.plan) {
            Some((at, FaultMode::Fail)) => n == at,
            Some((at, FaultMode::Crash)) => n >= at,
            None => false,
        };
        if fail {
            Err(PortError::Unavailable { service: "memory", operation, detail: format!("injected fault at call {n}") })
        } else {
            Ok(())
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The registry: records with etags, conditional writes.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    faults: Arc<Faults>,
    records: Mutex<BTreeMap<OrgId, (OrgRecord, u64)>>,
    state: Mutex<BTreeMap<String, String>>,
    docs: Mutex<BTreeMap<String, (String, u64)>>,
    version: AtomicUsize,
}

impl MemoryRegistry {
    pub fn new(faults: Arc<Faults>) -> Self {
        Self { faults, ..Default::default() }
    }
    pub fn get(&self, org: &OrgId) -> Option<OrgRecord> {
        lock(&self.records).get(org).map(|(r, _)| r.clone())
    }
    /// Replaces a record outside the protocol (to set up a test).
    pub fn put(&self, record: OrgRecord) {
        let v = self.version.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        lock(&self.records).insert(record.org_id.clone(), (record, v));
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn load(&self, org: &OrgId) -> Result<Option<Versioned<OrgRecord>>, PortError> {
        self.faults.step("registry.load").await?;
        Ok(lock(&self.records).get(org).map(|(r, v)| Versioned { value: r.clone(), etag: format!("\"{v}\"") }))
    }
    async fn create(&self, record: &OrgRecord) -> Result<String, PortError> {
        self.faults.step("registry.create").await?;
        let mut records = lock(&self.records);
        if records.contains_key(&record.org_id) {
            return Err(PortError::Conflict);
        }
        let v = self.version.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        records.insert(record.org_id.clone(), (record.clone(), v));
        Ok(format!("\"{v}\""))
    }
    async fn update(&self, record: &OrgRecord, etag: &str) -> Result<String, PortError> {
        self.faults.step("registry.update").await?;
        let mut records = lock(&self.records);
        match records.get(&record.org_id) {
            Some((_, v)) if format!("\"{v}\"") == etag => {
                let v = self.version.fetch_add(1, Ordering::SeqCst) as u64 + 1;
                records.insert(record.org_id.clone(), (record.clone(), v));
                Ok(format!("\"{v}\""))
            }
            _ => Err(PortError::Conflict),
        }
    }
    async fn delete(&self, org: &OrgId, etag: &str) -> Result<(), PortError> {
        self.faults.step("registry.delete").await?;
        let mut records = lock(&self.records);
        match records.get(org) {
            Some((_, v)) if format!("\"{v}\"") == etag => {
                records.remove(org);
                Ok(())
            }
            _ => Err(PortError::Conflict),
        }
    }
    async fn list_orgs(&self) -> Result<Vec<OrgId>, PortError> {
        self.faults.step("registry.list_orgs").await?;
        Ok(lock(&self.records).keys().cloned().collect())
    }
    async fn get_state(&self, name: &str) -> Result<Option<String>, PortError> {
        self.faults.step("registry.get_state").await?;
        Ok(lock(&self.state).get(name).cloned())
    }
    async fn put_state(&self, name: &str, value: &str) -> Result<(), PortError> {
        self.faults.step("registry.put_state").await?;
        lock(&self.state).insert(name.to_owned(), value.to_owned());
        Ok(())
    }
    async fn get_doc(&self, key: &str) -> Result<Option<Versioned<String>>, PortError> {
        self.faults.step("registry.get_doc").await?;
        Ok(lock(&self.docs).get(key).map(|(d, v)| Versioned { value: d.clone(), etag: format!("\"{v}\"") }))
    }
    async fn put_doc(&self, key: &str, value: &str, etag: Option<&str>) -> Result<String, PortError> {
        self.faults.step("registry.put_doc").await?;
        let mut docs = lock(&self.docs);
        let current = docs.get(key).map(|(_, v)| format!("\"{v}\""));
        if current.as_deref() != etag {
            return Err(PortError::Conflict);
        }
        let v = self.version.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        docs.insert(key.to_owned(), (value.to_owned(), v));
        Ok(format!("\"{v}\""))
    }
    async fn delete_doc(&self, key: &str) -> Result<(), PortError> {
        self.faults.step("registry.delete_doc").await?;
        lock(&self.docs).remove(key);
        Ok(())
    }
    async fn list_docs(&self, prefix: &str) -> Result<Vec<String>, PortError> {
        self.faults.step("registry.list_docs").await?;
        Ok(lock(&self.docs).keys().filter(|k| k.starts_with(prefix)).cloned().collect())
    }
}

/// A registry that hands every call to another one, for a test that changes
/// what one kind of call does (stands it still, loses its answer): name the
/// inner registry and override a hook; every other call passes through.
#[async_trait]
pub trait Passthrough: Send + Sync {
    fn inner(&self) -> &dyn Registry;
    /// Runs before a record is read.
    async fn before_load(&self, _org: &OrgId) {}
    /// A record's replacement; by default the inner registry's.
    async fn on_update(&self, record: &OrgRecord, etag: &str) -> Result<String, PortError> {
        self.inner().update(record, etag).await
    }
}

#[async_trait]
impl<T: Passthrough> Registry for T {
    async fn load(&self, org: &OrgId) -> Result<Option<Versioned<OrgRecord>>, PortError> {
        self.before_load(org).await;
        self.inner().load(org).await
    }
    async fn create(&self, record: &OrgRecord) -> Result<String, PortError> {
        self.inner().create(record).await
    }
    async fn update(&self, record: &OrgRecord, etag: &str) -> Result<String, PortError> {
        self.on_update(record, etag).await
    }
    async fn delete(&self, org: &OrgId, etag: &str) -> Result<(), PortError> {
        self.inner().delete(org, etag).await
    }
    async fn list_orgs(&self) -> Result<Vec<OrgId>, PortError> {
        self.inner().list_orgs().await
    }
    async fn get_state(&self, name: &str) -> Result<Option<String>, PortError> {
        self.inner().get_state(name).await
    }
    async fn put_state(&self, name: &str, value: &str) -> Result<(), PortError> {
        self.inner().put_state(name, value).await
    }
    async fn get_doc(&self, key: &str) -> Result<Option<Versioned<String>>, PortError> {
        self.inner().get_doc(key).await
    }
    async fn put_doc(&self, key: &str, value: &str, etag: Option<&str>) -> Result<String, PortError> {
        self.inner().put_doc(key, value, etag).await
    }
    async fn delete_doc(&self, key: &str) -> Result<(), PortError> {
        self.inner().delete_doc(key).await
    }
    async fn list_docs(&self, prefix: &str) -> Result<Vec<String>, PortError> {
        self.inner().list_docs(prefix).await
    }
}

/// IAM users and their access keys, with IAM's limit of two keys per user,
/// each user in an account: a call naming another account does not find it.
#[derive(Debug, Default)]
pub struct MemoryKeys {
    faults: Arc<Faults>,
    users: Mutex<BTreeMap<String, MemoryUser>>,
    /// Member accounts whose role cannot be assumed.
    unreachable: Mutex<std::collections::BTreeSet<String>>,
    next: AtomicUsize,
    /// The most keys any user ever had at once.
    pub max_keys_seen: AtomicUsize,
}

#[derive(Debug, Default)]
struct MemoryUser {
    account: Option<String>,
    keys: Vec<IamKey>,
    /// Key id → its last use.
    used: BTreeMap<String, super::ports::KeyUse>,
    /// Policies besides the project's own.
    others: Vec<String>,
}

impl MemoryKeys {
    pub fn new(faults: Arc<Faults>) -> Self {
        Self { faults, ..Default::default() }
    }
    pub fn keys_of(&self, user: &str) -> Vec<IamKey> {
        lock(&self.users).get(user).map(|u| u.keys.clone()).unwrap_or_default()
    }
    /// The account the user was created in, if it exists.
    pub fn account_of(&self, user: &str) -> Option<Option<String>> {
        lock(&self.users).get(user).map(|u| u.account.clone())
    }
    /// Whether `access_key_id` exists and is active (it would authenticate).
    pub fn works(&self, user: &str, access_key_id: &str) -> bool {
        self.keys_of(user).iter().any(|k| k.access_key_id == access_key_id && k.active)
    }
    /// From now on, the member account's role cannot be assumed (or, with
    /// `false`, it can again).
    pub fn set_unreachable(&self, account: &str, unreachable: bool) {
        let mut accounts = lock(&self.unreachable);
        if unreachable {
            accounts.insert(account.to_owned());
        } else {
            accounts.remove(account);
        }
    }
    pub fn user_exists(&self, user: &str) -> bool {
        lock(&self.users).contains_key(user)
    }
    /// A user made outside the service (in `account`), with keys created at
    /// the times given (`true`: active), as a provider's existing org has it.
    pub fn existing_user(&self, account: Option<&str>, user: &str, keys: &[(DateTime<Utc>, bool)]) -> Vec<String> {
        let ids: Vec<String> =
            keys.iter().map(|_| format!("AKIAOLD{:013}", self.next.fetch_add(1, Ordering::SeqCst))).collect();
        let keys = ids
            .iter()
            .zip(keys)
            .map(|(id, (at, active))| IamKey { access_key_id: id.clone(), active: *active, created_at: Some(*at) })
            .collect();
        let others = vec!["legacy-full-access".to_owned()];
        lock(&self.users).insert(
            user.to_owned(),
            MemoryUser { account: account.map(str::to_owned), keys, used: BTreeMap::new(), others },
        );
        ids
    }
    /// `access_key_id` signed a request at `at` (IAM records its last use).
    pub fn mark_used(&self, user: &str, access_key_id: &str, at: DateTime<Utc>) {
        if let Some(u) = lock(&self.users).get_mut(user) {
            let seen = super::ports::KeyUse { at, service: "s3".into(), region: "us-east-1".into() };
            u.used.insert(access_key_id.to_owned(), seen);
        }
    }

    async fn step(&self, operation: &'static str, account: Option<&str>) -> Result<(), PortError> {
        self.faults.step(operation).await?;
        self.reach(account)
    }

    fn reach(&self, account: Option<&str>) -> Result<(), PortError> {
        match account {
            Some(account) if lock(&self.unreachable).contains(account) => Err(PortError::Unavailable {
                service: "sts",
                operation: "AssumeRole",
                detail: format!("the role of account {account} could not be assumed (AccessDenied)"),
            }),
            _ => Ok(()),
        }
    }

    /// The user's keys, if it exists in the account named.
    fn with_user<T>(&self, user: &IamUser, f: impl FnOnce(&mut Vec<IamKey>) -> T) -> Result<T, PortError> {
        let mut users = lock(&self.users);
        match users.get_mut(&user.name) {
            Some(found) if found.account == user.account => Ok(f(&mut found.keys)),
            _ => Err(PortError::NoSuchUser),
        }
    }
}

#[async_trait]
impl AccessKeys for MemoryKeys {
    async fn ensure_user(&self, spec: &UserSpec) -> Result<(), PortError> {
        self.step("iam.ensure_user", spec.account.as_deref()).await?;
        lock(&self.users)
            .entry(spec.user_name.clone())
            .or_insert_with(|| MemoryUser { account: spec.account.clone(), ..MemoryUser::default() });
        Ok(())
    }
    async fn list_keys(&self, user: &IamUser) -> Result<Vec<IamKey>, PortError> {
        self.step("iam.list_keys", user.account.as_deref()).await?;
        self.with_user(user, |keys| keys.clone())
    }
    async fn create_key(&self, user: &IamUser) -> Result<NewKey, PortError> {
        self.step("iam.create_key", user.account.as_deref()).await?;
        self.with_user(user, |keys| {
            if keys.len() >= 2 {
                return Err(PortError::QuotaExceeded);
            }
            let n = self.next.fetch_add(1, Ordering::SeqCst) + 1;
            let access_key_id = format!("AKIAMEMORY{n:010}");
            keys.push(IamKey { access_key_id: access_key_id.clone(), active: true, created_at: Some(Utc::now()) });
            self.max_keys_seen.fetch_max(keys.len(), Ordering::SeqCst);
            Ok(NewKey { access_key_id, secret_access_key: SecretString::from(format!("memory-secret-{n}")) })
        })?
    }
    async fn set_active(&self, user: &IamUser, access_key_id: &str, active: bool) -> Result<(), PortError> {
        self.step("iam.set_active", user.account.as_deref()).await?;
        self.with_user(user, |keys| {
            if let Some(k) = keys.iter_mut().find(|k| k.access_key_id == access_key_id) {
                k.active = active;
            }
        })
    }
    async fn delete_key(&self, user: &IamUser, access_key_id: &str) -> Result<(), PortError> {
        self.step("iam.delete_key", user.account.as_deref()).await?;
        self.with_user(user, |keys| keys.retain(|k| k.access_key_id != access_key_id))
    }
    async fn delete_user(&self, user: &IamUser) -> Result<(), PortError> {
        self.step("iam.delete_user", user.account.as_deref()).await?;
        let mut users = lock(&self.users);
        if users.get(&user.name).is_some_and(|u| u.account == user.account) {
            users.remove(&user.name);
        }
        Ok(())
    }
    async fn check_account(&self, account: Option<&str>) -> Result<(), PortError> {
        self.reach(account)
    }
    async fn create_user(&self, spec: &UserSpec) -> Result<Vec<IamKey>, PortError> {
        self.step("iam.create_user", spec.account.as_deref()).await?;
        let mut users = lock(&self.users);
        match users.get(&spec.user_name) {
            Some(existing) => Ok(existing.keys.clone()),
            None => {
                let user = MemoryUser { account: spec.account.clone(), ..MemoryUser::default() };
                users.insert(spec.user_name.clone(), user);
                Ok(Vec::new())
            }
        }
    }
    async fn last_used(&self, user: &IamUser, access_key_id: &str) -> Result<Option<super::ports::KeyUse>, PortError> {
        self.step("iam.last_used", user.account.as_deref()).await?;
        let users = lock(&self.users);
        // As IAM: a key that no longer exists has no last use to tell.
        let found = users.get(&user.name).filter(|u| u.keys.iter().any(|k| k.access_key_id == access_key_id));
        Ok(found.and_then(|u| u.used.get(access_key_id).cloned()))
    }
    async fn other_policies(&self, user: &IamUser) -> Result<Vec<String>, PortError> {
        self.step("iam.other_policies", user.account.as_deref()).await?;
        let users = lock(&self.users);
        users.get(&user.name).map(|u| u.others.clone()).ok_or(PortError::NoSuchUser)
    }
}

/// A version of an org's secret: (version, access key id, stage).
/// (version, the key, stage).
type VaultVersion = (String, NewKey, &'static str);

/// The key vault: per org, versions with their stage.
#[derive(Debug, Default)]
pub struct MemoryVault {
    faults: Arc<Faults>,
    /// org → (version, key, stage) in order of creation.
    secrets: Mutex<BTreeMap<OrgId, Vec<VaultVersion>>>,
    readers: Mutex<BTreeMap<OrgId, String>>,
}

impl MemoryVault {
    pub fn new(faults: Arc<Faults>) -> Self {
        Self { faults, ..Default::default() }
    }
    /// The access key id whose secret is `AWSCURRENT`.
    pub fn current_key(&self, org: &OrgId) -> Option<String> {
        lock(&self.secrets).get(org)?.iter().find(|v| v.2 == "AWSCURRENT").map(|v| v.1.access_key_id.clone())
    }
    /// The access key id whose secret is `AWSPENDING`.
    pub fn pending_key(&self, org: &OrgId) -> Option<String> {
        lock(&self.secrets).get(org)?.iter().find(|v| v.2 == "AWSPENDING").map(|v| v.1.access_key_id.clone())
    }
    pub fn exists(&self, org: &OrgId) -> bool {
        lock(&self.secrets).contains_key(org) || lock(&self.readers).contains_key(org)
    }
    /// The principal allowed to read the org's secret, if any.
    pub fn reader(&self, org: &OrgId) -> Option<String> {
        lock(&self.readers).get(org).cloned()
    }
}

#[async_trait]
impl KeyVault for MemoryVault {
    async fn put_pending(&self, org: &OrgId, version: &str, key: &NewKey) -> Result<(), PortError> {
        self.faults.step("vault.put_pending").await?;
        let mut secrets = lock(&self.secrets);
        let versions = secrets.entry(org.clone()).or_default();
        if !versions.iter().any(|v| v.0 == version) {
            for v in versions.iter_mut().filter(|v| v.2 == "AWSPENDING") {
                v.2 = "";
            }
            versions.push((version.to_owned(), key.clone(), "AWSPENDING"));
        }
        Ok(())
    }
    /// As Secrets Manager with `RemoveFromVersionId`: the label moves only
    /// from the version named (or, with `None`, only if no version holds it).
    async fn promote(&self, org: &OrgId, version: &str, replacing: Option<&str>) -> Result<(), PortError> {
        if replacing == Some(version) {
            return Ok(());
        }
        self.faults.step("vault.promote").await?;
        let mut secrets = lock(&self.secrets);
        let unavailable =
            |detail: &str| PortError::Unavailable { service: "memory", operation: "promote", detail: detail.into() };
        let versions = secrets.get_mut(org).ok_or_else(|| unavailable("no secret"))?;
        if !versions.iter().any(|v| v.0 == version) {
            return Err(unavailable("no such version"));
        }
        let holder = versions.iter().find(|v| v.2 == "AWSCURRENT").map(|v| v.0.clone());
        if holder.as_deref() != replacing {
            return Err(PortError::Conflict);
        }
        for v in versions.iter_mut() {
            v.2 = match (v.0 == version, v.2) {
                (true, _) => "AWSCURRENT",
                (false, "AWSCURRENT") => "AWSPREVIOUS",
                (false, "AWSPREVIOUS") => "",
                (false, other) => other,
            };
        }
        Ok(())
    }
    async fn get(&self, org: &OrgId, version: &str) -> Result<Option<NewKey>, PortError> {
        self.faults.step("vault.get").await?;
        Ok(lock(&self.secrets).get(org).and_then(|v| v.iter().find(|v| v.0 == version)).map(|v| v.1.clone()))
    }
    async fn current_version(&self, org: &OrgId) -> Result<Option<String>, PortError> {
        self.faults.step("vault.current_version").await?;
        Ok(lock(&self.secrets).get(org).and_then(|v| v.iter().find(|v| v.2 == "AWSCURRENT").map(|v| v.0.clone())))
    }
    async fn delete(&self, org: &OrgId) -> Result<(), PortError> {
        self.faults.step("vault.delete").await?;
        lock(&self.secrets).remove(org);
        lock(&self.readers).remove(org);
        Ok(())
    }
    async fn allow_reader(&self, org: &OrgId, principal: &str) -> Result<(), PortError> {
        self.faults.step("vault.allow_reader").await?;
        lock(&self.readers).insert(org.clone(), principal.to_owned());
        Ok(())
    }
}

/// Published notifications, in order.
#[derive(Debug, Default)]
pub struct MemoryNotifier {
    faults: Arc<Faults>,
    published: Mutex<Vec<Notification>>,
}

impl MemoryNotifier {
    pub fn new(faults: Arc<Faults>) -> Self {
        Self { faults, ..Default::default() }
    }
    pub fn published(&self) -> Vec<Notification> {
        lock(&self.published).clone()
    }
}

#[async_trait]
impl Notifier for MemoryNotifier {
    async fn publish(&self, notifications: &[Notification]) -> Result<(), PortError> {
        self.faults.step("events.publish").await?;
        lock(&self.published).extend_from_slice(notifications);
        Ok(())
    }
}

/// The audit trail, in order.
#[derive(Debug, Default)]
pub struct MemoryAudit {
    faults: Arc<Faults>,
    pub entries: Mutex<Vec<AuditEntry>>,
}

impl MemoryAudit {
    pub fn new(faults: Arc<Faults>) -> Self {
        Self { faults, ..Default::default() }
    }
    pub fn entries(&self) -> Vec<AuditEntry> {
        lock(&self.entries).clone()
    }
}

#[async_trait]
impl AuditLog for MemoryAudit {
    async fn append(&self, entry: &AuditEntry) -> Result<(), PortError> {
        self.faults.step("audit.append").await?;
        let mut entries = lock(&self.entries);
        if !entries.contains(entry) {
            entries.push(entry.clone());
        }
        Ok(())
    }
}

/// A verifier that accepts every key (its calls still count as steps).
#[derive(Debug, Default)]
pub struct MemoryVerifier {
    faults: Arc<Faults>,
}

impl MemoryVerifier {
    pub fn new(faults: Arc<Faults>) -> Self {
        Self { faults }
    }
}

#[async_trait]
impl KeyVerifier for MemoryVerifier {
    async fn verify(&self, _key: &NewKey, _bucket: &str, _prefix: &str) -> Result<(), PortError> {
        self.faults.step("verify").await
    }
}

/// The queue of the sweep's slices: what was sent, in order.
#[derive(Debug, Default)]
pub struct MemoryQueue {
    bodies: Mutex<Vec<String>>,
    /// The messages asked to come back early, and when.
    pub redeliveries: Mutex<Vec<(String, std::time::Duration)>>,
}

impl MemoryQueue {
    /// The slices sent since the last take, in order.
    pub fn take(&self) -> Vec<super::fanout::Slice> {
        lock(&self.bodies).drain(..).map(|b| serde_json::from_str(&b).expect("a slice")).collect()
    }
}

#[async_trait]
impl super::fanout::SliceQueue for MemoryQueue {
    async fn send(&self, bodies: &[String]) -> Result<(), PortError> {
        lock(&self.bodies).extend(bodies.iter().cloned());
        Ok(())
    }
    async fn deliver_again_after(&self, receipt_handle: &str, after: std::time::Duration) -> Result<(), PortError> {
        lock(&self.redeliveries).push((receipt_handle.to_owned(), after));
        Ok(())
    }
}

/// A clock a test moves by hand (leases), starting at the real time.
#[derive(Debug)]
pub struct ManualClock(Mutex<chrono::DateTime<Utc>>);

impl Default for ManualClock {
    fn default() -> Self {
        Self(Mutex::new(Utc::now()))
    }
}

impl ManualClock {
    pub fn advance(&self, by: chrono::TimeDelta) {
        *lock(&self.0) += by;
    }
}

impl super::ports::Clock for ManualClock {
    fn now(&self) -> super::domain::LeaseTime {
        super::domain::LeaseTime::from_utc(*lock(&self.0))
    }
}

/// Every in-memory service on one fault plan: a whole world for a test.
#[derive(Debug, Default)]
pub struct MemoryWorld {
    pub faults: Arc<Faults>,
    pub registry: MemoryRegistry,
    pub keys: MemoryKeys,
    pub audit: MemoryAudit,
    pub verifier: MemoryVerifier,
    pub vault: MemoryVault,
    pub notifier: MemoryNotifier,
    /// The clock leases are given and judged by.
    pub clock: ManualClock,
}

impl MemoryWorld {
    pub fn new() -> Self {
        let faults = Arc::new(Faults::default());
        Self {
            registry: MemoryRegistry::new(faults.clone()),
            keys: MemoryKeys::new(faults.clone()),
            audit: MemoryAudit::new(faults.clone()),
            verifier: MemoryVerifier::new(faults.clone()),
            vault: MemoryVault::new(faults.clone()),
            notifier: MemoryNotifier::new(faults.clone()),
            clock: ManualClock::default(),
            faults,
        }
    }

    /// Every port, on these services.
    pub fn ports(&self) -> super::rotation::Ports<'_> {
        super::rotation::Ports {
            registry: &self.registry,
            keys: &self.keys,
            audit: &self.audit,
            verifier: Some(&self.verifier),
            vault: Some(&self.vault),
            notifier: Some(&self.notifier),
            clock: &self.clock,
        }
    }

    /// The org's audit trail as the sweep will have copied it: the entries
    /// written, then those its record still holds for the trail.
    pub fn audit_trail(&self, org: &OrgId) -> Vec<AuditEntry> {
        let queued = self.registry.get(org).map(|r| r.audit_outbox).unwrap_or_default();
        self.audit.entries().into_iter().filter(|e| &e.org_id == org).chain(queued).collect()
    }

    /// Enrolls `org` (prefix `{org}/` of bucket `logs`) as of `at`, outside the
    /// fault plan's interest: its two calls are made before any fault is injected.
    pub async fn enroll(&self, org: &OrgId, at: chrono::DateTime<Utc>) -> OrgRecord {
        let record = OrgRecord::enrolled(org, "logs", &format!("{org}/"), at);
        let spec = UserSpec {
            user_name: record.iam_user.clone(),
            account: None,
            path: "/managed-s3/".into(),
            org: org.clone(),
            bucket: "logs".into(),
            prefix: record.prefix.clone(),
        };
        self.keys.ensure_user(&spec).await.expect("no fault is planned yet");
        self.registry.put(record.clone());
        record
    }
}
