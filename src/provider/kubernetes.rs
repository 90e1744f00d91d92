//! The Kubernetes RBAC provider: a RoleBinding (the role names a namespace) or a
//! ClusterRoleBinding from the subject to the policy's ClusterRole, named by the grant key and
//! labelled with the request UID. Kubernetes has no expiring bindings: the operator ends them.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::{
    api::{
        authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
        rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding, RoleRef, Subject as RbacSubject},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde::{Serialize, de::DeserializeOwned};
use tracing::debug;

use super::{
    EXPIRES_AT_ANNOTATION, Error, GrantRecord, GrantSpec, GrantState, MANAGED_BY, MANAGED_BY_LABEL,
    Provider, REQUEST_ANNOTATION, REQUEST_UID_LABEL, RequestRef,
};
use crate::{crd::v1alpha1::KubernetesTarget, subject::Subject, target::Target};

/// The field manager of the bindings the operator writes.
const FIELD_MANAGER: &str = "jit-operator";
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Grants ClusterRoles through RBAC bindings.
pub struct KubernetesProvider {
    client: Client,
    /// The permission each ClusterRole was last asked about by, and when it was read: one
    /// read per role a minute instead of one per grant. Only the propagation check uses it,
    /// and a stale one can only make that check end early or wait out its limit.
    samples: std::sync::Mutex<BTreeMap<String, (tokio::time::Instant, Option<ResourceAttributes>)>>,
    /// Where the operator's bindings are, as the watch [`Provider::watch`] starts saw them.
    bindings: Arc<Mutex<ManagedBindings>>,
}

/// A binding's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum BindingKind {
    RoleBinding,
    ClusterRoleBinding,
}

/// A binding: its kind, namespace (RoleBindings) and name.
type BindingName = (BindingKind, Option<String>, String);

/// The operator's bindings by the request UID on their label, from a watch of them. A revoke
/// deletes by name what this knows of the request (and what its status records) instead of
/// listing every binding in the cluster for one label: at 3,000 grants those two lists were an
/// eighth of the API server's CPU while revoking, and their cost grows with the cluster.
#[derive(Default)]
struct ManagedBindings {
    /// Binding -> request UID, and the reverse (one UID shared by both, and a list sized for
    /// the one binding a request has: at 3,000 grants a set and two copies of each UID were
    /// two thirds of the 650 bytes a binding cost here).
    uid_of: HashMap<BindingName, Arc<str>>,
    by_uid: HashMap<Arc<str>, Vec<BindingName>>,
    /// What each kind's watch has listed so far since it last started listing.
    listing: HashMap<BindingKind, Vec<(BindingName, String)>>,
    /// The kinds whose watch has listed everything at least once.
    listed: HashSet<BindingKind>,
    /// The changes the operator is making to its bindings: their watch events need not send
    /// the controller to look at what it just did (two looks a lifecycle otherwise, each a
    /// read of the request and one of the binding, queued beside the revokes that are due).
    own: HashMap<BindingName, OwnChange>,
}

/// A change the operator is making to one of its bindings, as far as it has got.
#[derive(Debug, PartialEq, Eq)]
enum OwnChange {
    /// Being applied; `seen` once the watch reported a change while it was (the watch may
    /// report a write before its response arrives).
    Applying { seen: bool },
    /// Applied, and the watch has not reported it yet: the version the API server gave it.
    Applied(String),
    /// Being deleted.
    Deleting,
}

impl ManagedBindings {
    fn insert(&mut self, binding: BindingName, uid: String) {
        self.remove(&binding);
        let uid: Arc<str> = match self.by_uid.get_key_value(uid.as_str()) {
            Some((shared, _)) => shared.clone(),
            None => uid.into(),
        };
        self.by_uid
            .entry(uid.clone())
            .or_insert_with(|| Vec::with_capacity(1))
            .push(binding.clone());
        self.uid_of.insert(binding, uid);
    }

    fn remove(&mut self, binding: &BindingName) {
        let Some(uid) = self.uid_of.remove(binding) else {
            return;
        };
        if let Some(bindings) = self.by_uid.get_mut(&uid) {
            bindings.retain(|known| known != binding);
            if bindings.is_empty() {
                self.by_uid.remove(&uid);
            }
        }
    }

    /// Takes one event of the watch of `kind`.
    fn take<K: kube::Resource>(
        &mut self,
        kind: BindingKind,
        event: &watcher::Event<PartialObjectMeta<K>>,
    ) {
        let named = |object: &PartialObjectMeta<K>| named(kind, object);
        let uid = |object: &PartialObjectMeta<K>| object.labels().get(REQUEST_UID_LABEL).cloned();
        match event {
            watcher::Event::Init => {
                self.listing.insert(kind, Vec::new());
            }
            watcher::Event::InitApply(object) => {
                if let (Some(listing), Some(uid)) = (self.listing.get_mut(&kind), uid(object)) {
                    listing.push((named(object), uid));
                }
            }
            watcher::Event::InitDone => {
                let listed = self.listing.remove(&kind).unwrap_or_default();
                let stale: Vec<BindingName> = self
                    .uid_of
                    .keys()
                    .filter(|binding| binding.0 == kind)
                    .cloned()
                    .collect();
                for binding in &stale {
                    self.remove(binding);
                }
                for (binding, uid) in listed {
                    self.insert(binding, uid);
                }
                self.listed.insert(kind);
            }
            watcher::Event::Apply(object) => match uid(object) {
                Some(uid) => self.insert(named(object), uid),
                None => self.remove(&named(object)),
            },
            watcher::Event::Delete(object) => self.remove(&named(object)),
        }
    }

    /// Notes a change the operator is about to make to `binding`.
    fn expect(&mut self, binding: BindingName, change: OwnChange) {
        self.own.insert(binding, change);
    }

    /// Notes how an apply of `binding` ended: the version it was given, none if it failed.
    fn applied(&mut self, binding: &BindingName, version: Option<String>) {
        match (self.own.remove(binding), version) {
            (Some(OwnChange::Applying { seen: false }), Some(version)) => {
                self.own
                    .insert(binding.clone(), OwnChange::Applied(version));
            }
            (Some(OwnChange::Deleting), _) => {
                self.own.insert(binding.clone(), OwnChange::Deleting);
            }
            _ => {}
        }
    }

    /// Notes that a delete of `binding` ended without the watch having anything to report
    /// (nothing was there, or it failed).
    fn not_deleted(&mut self, binding: &BindingName) {
        if self.own.get(binding) == Some(&OwnChange::Deleting) {
            self.own.remove(binding);
        }
    }

    /// Whether a change the watch reports is one the operator made itself. A change of anyone
    /// else has a version of its own, or comes while nothing of the operator's is under way.
    fn own_change<K: kube::Resource>(
        &mut self,
        kind: BindingKind,
        event: &watcher::Event<PartialObjectMeta<K>>,
    ) -> bool {
        let (binding, deleted) = match event {
            watcher::Event::Apply(object) => (named(kind, object), false),
            watcher::Event::Delete(object) => (named(kind, object), true),
            watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::InitDone => {
                return false;
            }
        };
        let Some(change) = self.own.get_mut(&binding) else {
            return false;
        };
        let version = match event {
            watcher::Event::Apply(object) | watcher::Event::Delete(object) => {
                object.resource_version()
            }
            _ => None,
        };
        match (change, deleted) {
            (OwnChange::Applying { seen }, false) if !*seen => {
                *seen = true;
                true
            }
            (OwnChange::Applied(applied), false) => {
                let own = version.as_deref() == Some(applied.as_str());
                self.own.remove(&binding);
                own
            }
            (OwnChange::Deleting, true) => {
                self.own.remove(&binding);
                true
            }
            _ => false,
        }
    }

    /// The bindings labelled with the request's UID, once both watches have listed them.
    fn of_request(&self, uid: &str) -> Option<Vec<BindingName>> {
        let listed = [BindingKind::RoleBinding, BindingKind::ClusterRoleBinding]
            .iter()
            .all(|kind| self.listed.contains(kind));
        listed.then(|| {
            self.by_uid
                .get(uid)
                .map(|bindings| bindings.to_vec())
                .unwrap_or_default()
        })
    }
}

/// A binding as the API server showed it.
fn named<K: kube::Resource>(kind: BindingKind, binding: &PartialObjectMeta<K>) -> BindingName {
    (kind, binding.namespace(), binding.name_any())
}

/// The binding a grant reference (`RoleBinding NS/NAME`, `ClusterRoleBinding NAME`) names.
fn binding_of_reference(reference: &str) -> Option<BindingName> {
    match reference.split_once(' ')? {
        ("RoleBinding", rest) => {
            let (namespace, name) = rest.split_once('/')?;
            Some((
                BindingKind::RoleBinding,
                Some(namespace.to_owned()),
                name.to_owned(),
            ))
        }
        ("ClusterRoleBinding", name) => {
            Some((BindingKind::ClusterRoleBinding, None, name.to_owned()))
        }
        _ => None,
    }
}

/// Watches one kind of the operator's bindings (metadata only) into `bindings`; yields the
/// request of each binding that changed or went.
fn watch_kind<K>(
    api: Api<PartialObjectMeta<K>>,
    kind: BindingKind,
    bindings: Arc<Mutex<ManagedBindings>>,
) -> futures::stream::BoxStream<'static, (String, String)>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let config = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    watcher::watcher(api, config)
        .default_backoff()
        .filter_map(move |event| {
            let bindings = bindings.clone();
            async move {
                let event = match event {
                    Ok(event) => event,
                    Err(error) => {
                        debug!(error = %crate::telemetry::error_chain(&error), "binding watch failed; retrying");
                        return None;
                    }
                };
                let own = {
                    let mut bindings = bindings.lock().unwrap_or_else(PoisonError::into_inner);
                    bindings.take(kind, &event);
                    bindings.own_change(kind, &event)
                };
                if own {
                    return None;
                }
                match event {
                    watcher::Event::Apply(object) | watcher::Event::Delete(object) => {
                        let (namespace, name) =
                            object.annotations().get(REQUEST_ANNOTATION)?.split_once('/')?;
                        Some((namespace.to_owned(), name.to_owned()))
                    }
                    watcher::Event::Init
                    | watcher::Event::InitApply(_)
                    | watcher::Event::InitDone => None,
                }
            }
        })
        .boxed()
}

/// How long a ClusterRole's sample permission is used before the role is read again.
const SAMPLE_LIFETIME: Duration = Duration::from_secs(60);

impl KubernetesProvider {
    /// Applies `binding` with `applying`, noting it as the operator's own change.
    async fn own_apply(
        &self,
        binding: BindingName,
        applying: impl Future<Output = Result<Option<String>, Error>>,
    ) -> Result<(), Error> {
        let bindings = || self.bindings.lock().unwrap_or_else(PoisonError::into_inner);
        bindings().expect(binding.clone(), OwnChange::Applying { seen: false });
        let applied = applying.await;
        bindings().applied(&binding, applied.as_ref().ok().cloned().flatten());
        applied.map(|_| ())
    }

    /// Deletes these bindings and makes sure each is gone.
    async fn delete_all(&self, bindings: Vec<BindingName>) -> Result<(), Error> {
        let own = || self.bindings.lock().unwrap_or_else(PoisonError::into_inner);
        for binding in bindings {
            own().expect(binding.clone(), OwnChange::Deleting);
            let deleted = match &binding {
                (BindingKind::RoleBinding, Some(namespace), name) => {
                    let reference = format!("RoleBinding {namespace}/{name}");
                    let api = Api::<RoleBinding>::namespaced(self.client.clone(), namespace);
                    delete_one(&api, name, &reference).await
                }
                (BindingKind::ClusterRoleBinding, _, name) => {
                    let reference = format!("ClusterRoleBinding {name}");
                    let api = Api::<ClusterRoleBinding>::all(self.client.clone());
                    delete_one(&api, name, &reference).await
                }
                // A RoleBinding always has a namespace.
                (BindingKind::RoleBinding, None, _) => Ok(false),
            };
            if !matches!(deleted, Ok(true)) {
                own().not_deleted(&binding);
            }
            deleted?;
        }
        Ok(())
    }

    /// A provider that writes bindings with this client.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            samples: std::sync::Mutex::default(),
            bindings: Arc::default(),
        }
    }

    /// Waits, briefly, until the API server's authorizer acts on a new binding, so that
    /// `Granted` means the subject can use the role at once (the RBAC authorizer reads
    /// bindings from a cache that lags the write). Asks about one permission the ClusterRole
    /// grants; gives up quietly when there is none to ask about or time runs out.
    async fn wait_until_effective(&self, grant: &GrantSpec<'_>, target: &KubernetesTarget) {
        let Some(attributes) = self.sample_permission(target).await else {
            return;
        };
        let Some(review) = access_review(&grant.identity.subject, attributes) else {
            return;
        };
        let reviews = Api::<SubjectAccessReview>::all(self.client.clone());
        let deadline = tokio::time::Instant::now() + PROPAGATION_LIMIT;
        while tokio::time::Instant::now() < deadline {
            match reviews.create(&PostParams::default(), &review).await {
                Ok(answer) if answer.status.as_ref().is_some_and(|status| status.allowed) => return,
                Ok(_) => {}
                Err(error) => {
                    debug!(error = %error, "access review failed; not waiting for the grant to propagate");
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        debug!(reference = %reference(target, grant.request.key().as_str()), "grant not yet effective after the propagation limit");
    }

    /// One permission the ClusterRole grants, as access-review attributes in the target's
    /// namespace.
    async fn sample_permission(&self, target: &KubernetesTarget) -> Option<ResourceAttributes> {
        let now = tokio::time::Instant::now();
        let remembered = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&target.cluster_role)
            .filter(|(read, _)| now.duration_since(*read) < SAMPLE_LIFETIME)
            .map(|(_, sample)| sample.clone());
        let sample = match remembered {
            Some(sample) => sample,
            None => {
                let role = Api::<ClusterRole>::all(self.client.clone())
                    .get_opt(&target.cluster_role)
                    .await
                    .ok()?;
                // A role not there yet is read again next time: it may be created any moment.
                let sample = sample_of(&role?);
                let mut samples = self
                    .samples
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                // Bounded by the roles policies name; forget the stale ones as we go.
                samples.retain(|_, (read, _)| now.duration_since(*read) < SAMPLE_LIFETIME);
                samples.insert(target.cluster_role.clone(), (now, sample.clone()));
                sample
            }
        };
        Some(ResourceAttributes {
            namespace: target.namespace.clone(),
            ..sample?
        })
    }
}

/// One permission a ClusterRole grants, as access-review attributes without a namespace.
fn sample_of(role: &ClusterRole) -> Option<ResourceAttributes> {
    role.rules.iter().flatten().find_map(|rule| {
        let verb = rule.verbs.first()?.clone();
        let group = rule.api_groups.as_ref()?.first()?.clone();
        let resource = rule.resources.as_ref()?.first()?.clone();
        let (resource, subresource) = match resource.split_once('/') {
            Some((resource, subresource)) => (resource.to_owned(), Some(subresource.to_owned())),
            None => (resource, None),
        };
        Some(ResourceAttributes {
            verb: Some(verb),
            group: Some(group),
            resource: Some(resource),
            subresource,
            name: rule
                .resource_names
                .as_ref()
                .and_then(|names| names.first().cloned()),
            ..ResourceAttributes::default()
        })
    })
}

/// How long a grant may take to become effective before `Granted` is reported anyway.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(5);

fn access_review(subject: &Subject, attributes: ResourceAttributes) -> Option<SubjectAccessReview> {
    let (user, groups) = match subject {
        Subject::Group(group) => (
            "jit-operator:propagation-check".to_owned(),
            vec![group.clone()],
        ),
        other => (other.username()?, Vec::new()),
    };
    Some(SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user),
            groups: Some(groups),
            resource_attributes: Some(attributes),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    })
}

/// The binding a grant should be, whichever kind it is.
struct DesiredBinding {
    metadata: ObjectMeta,
    role_ref: RoleRef,
    subjects: Vec<RbacSubject>,
}

fn target<'a>(grant: &'a GrantSpec<'_>) -> Result<&'a KubernetesTarget, Error> {
    grant
        .role
        .kubernetes
        .as_ref()
        .ok_or_else(|| Error::NoTarget {
            role: grant.role.name.clone(),
        })
}

fn rbac_subject(subject: &Subject) -> RbacSubject {
    match subject {
        Subject::User(name) => RbacSubject {
            kind: "User".into(),
            api_group: Some(RBAC_GROUP.into()),
            name: name.clone(),
            namespace: None,
        },
        Subject::Group(name) => RbacSubject {
            kind: "Group".into(),
            api_group: Some(RBAC_GROUP.into()),
            name: name.clone(),
            namespace: None,
        },
        Subject::ServiceAccount { namespace, name } => RbacSubject {
            kind: "ServiceAccount".into(),
            api_group: Some(String::new()),
            name: name.clone(),
            namespace: Some(namespace.clone()),
        },
    }
}

fn desired(grant: &GrantSpec<'_>, target: &KubernetesTarget) -> DesiredBinding {
    let request = grant.request;
    DesiredBinding {
        metadata: ObjectMeta {
            name: Some(request.key().as_str().to_owned()),
            namespace: target.namespace.clone(),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                (REQUEST_UID_LABEL.to_owned(), request.uid.clone()),
            ])),
            annotations: Some(BTreeMap::from([
                (
                    REQUEST_ANNOTATION.to_owned(),
                    format!("{}/{}", request.namespace, request.name),
                ),
                (
                    EXPIRES_AT_ANNOTATION.to_owned(),
                    grant.expires_at.to_string(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some(RBAC_GROUP.into()),
            kind: "ClusterRole".into(),
            name: target.cluster_role.clone(),
        },
        subjects: vec![rbac_subject(&grant.identity.subject)],
    }
}

fn reference(target: &KubernetesTarget, name: &str) -> String {
    match &target.namespace {
        Some(namespace) => format!("RoleBinding {namespace}/{name}"),
        None => format!("ClusterRoleBinding {name}"),
    }
}

fn managed_by_request(request: &RequestRef) -> ListParams {
    ListParams::default().labels(&format!(
        "{MANAGED_BY_LABEL}={MANAGED_BY},{REQUEST_UID_LABEL}={}",
        request.uid
    ))
}

fn kubernetes_error(action: &'static str, reference: &str) -> impl FnOnce(kube::Error) -> Error {
    let reference = reference.to_owned();
    move |source| Error::Kubernetes {
        action,
        reference,
        source,
    }
}

/// Server-side applies a binding; a binding of that name pointing at another role (roleRef
/// cannot change) is replaced. Returns the version the binding was given, when a single
/// apply made it (a replaced one changes more than once, and each change is looked at).
async fn apply<K>(
    api: &Api<K>,
    name: &str,
    object: &K,
    reference: &str,
) -> Result<Option<String>, Error>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch(name, &params, &Patch::Apply(object)).await {
        // A binding held in Terminating by a finalizer would vanish once it is released:
        // release it now and make a fresh one.
        Ok(applied) if terminating(&applied) => {
            ensure_gone(api, name, reference).await?;
            api.patch(name, &params, &Patch::Apply(object))
                .await
                .map(|_| None)
                .map_err(kubernetes_error("create", reference))
        }
        Ok(applied) => Ok(applied.resource_version()),
        Err(kube::Error::Api(status)) if status.code == 422 => {
            api.delete(name, &DeleteParams::foreground())
                .await
                .map(|_| ())
                .or_else(ignore_not_found)
                .map_err(kubernetes_error("replace", reference))?;
            api.patch(name, &params, &Patch::Apply(object))
                .await
                .map(|_| None)
                .map_err(kubernetes_error("create", reference))
        }
        Err(error) => Err(kubernetes_error("create", reference)(error)),
    }
}

/// Looks at every binding of one kind that `selector` finds, in any namespace, a page at a
/// time: the sweep holds a page of bindings, not all of them.
async fn for_each_labelled<K>(
    api: Api<K>,
    kinds: &str,
    selector: ListParams,
    mut each: impl FnMut(PartialObjectMeta<K>),
) -> Result<(), Error>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    const PAGE: u32 = 500;
    let mut params = selector.limit(PAGE);
    loop {
        let page = api
            .list_metadata(&params)
            .await
            .map_err(kubernetes_error("list", kinds))?;
        page.items.into_iter().for_each(&mut each);
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}

/// Both kinds of binding the operator makes.
const BINDING_KINDS: [BindingKind; 2] = [BindingKind::RoleBinding, BindingKind::ClusterRoleBinding];

/// Every binding of `kinds` that `selector` matches, across namespaces, with its labels.
async fn for_each_labelled_binding(
    client: &Client,
    kinds: &[BindingKind],
    selector: ListParams,
    mut each: impl FnMut(BindingName, &BTreeMap<String, String>),
) -> Result<(), Error> {
    for kind in kinds {
        match kind {
            BindingKind::RoleBinding => {
                for_each_labelled(
                    Api::<RoleBinding>::all(client.clone()),
                    "RoleBindings",
                    selector.clone(),
                    |binding| each(named(*kind, &binding), binding.labels()),
                )
                .await?;
            }
            BindingKind::ClusterRoleBinding => {
                for_each_labelled(
                    Api::<ClusterRoleBinding>::all(client.clone()),
                    "ClusterRoleBindings",
                    selector.clone(),
                    |binding| each(named(*kind, &binding), binding.labels()),
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Deletes one binding and makes sure it is gone; one already gone counts as deleted.
/// Deletes one binding and makes sure it is gone; whether there was one to delete.
async fn delete_one<K>(api: &Api<K>, name: &str, reference: &str) -> Result<bool, Error>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    // The API server answers a delete that removed the object with a Status, and one that
    // left it in place (finalizers) with the object: only that one needs a second look.
    let answer = match api.delete(name, &DeleteParams::default()).await {
        Ok(answer) => answer,
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(false),
        Err(error) => return Err(kubernetes_error("delete", reference)(error)),
    };
    if answer.is_left() {
        ensure_gone(api, name, reference).await?;
    }
    Ok(true)
}

/// Makes sure a deleted binding is gone, not Terminating: RBAC honours a binding until it is
/// removed, and anyone who may patch bindings can add a finalizer without an escalation check.
/// Finalizers on the operator's own bindings are removed; a binding still there afterwards is
/// an error, so that the revoke is retried and loud.
async fn ensure_gone<K>(api: &Api<K>, name: &str, reference: &str) -> Result<(), Error>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let read = kubernetes_error("read", reference);
    let Some(object) = api.get_metadata_opt(name).await.map_err(read)? else {
        return Ok(());
    };
    if !object.finalizers().is_empty() {
        debug!(%reference, finalizers = ?object.finalizers(), "removing finalizers from a revoked binding");
        let patch = serde_json::json!({"metadata": {"finalizers": null}});
        api.patch_metadata(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .or_else(ignore_not_found)
            .map_err(kubernetes_error("remove the finalizers of", reference))?;
    }
    let read = kubernetes_error("read", reference);
    match api.get_metadata_opt(name).await.map_err(read)? {
        None => Ok(()),
        Some(_) => Err(Error::StillPresent {
            reference: reference.to_owned(),
        }),
    }
}

/// Whether a binding read back is on its way out (it still works until it is gone).
fn terminating<K: ResourceExt>(object: &K) -> bool {
    object.meta().deletion_timestamp.is_some()
}

fn ignore_not_found(error: kube::Error) -> Result<(), kube::Error> {
    match error {
        kube::Error::Api(status) if status.code == 404 => Ok(()),
        other => Err(other),
    }
}

fn compare(
    role_ref: &RoleRef,
    subjects: Option<&Vec<RbacSubject>>,
    want: &DesiredBinding,
) -> GrantState {
    if *role_ref != want.role_ref {
        return GrantState::Drifted(format!(
            "binds {} {} instead of {} {}",
            role_ref.kind, role_ref.name, want.role_ref.kind, want.role_ref.name
        ));
    }
    if subjects != Some(&want.subjects) {
        return GrantState::Drifted(format!(
            "has {} subjects instead of exactly {}",
            subjects.map_or(0, Vec::len),
            want.subjects.len()
        ));
    }
    GrantState::Present
}

#[async_trait]
impl Provider for KubernetesProvider {
    fn target(&self) -> Target {
        Target::Kubernetes
    }

    async fn grant(&self, grant: &GrantSpec<'_>) -> Result<GrantRecord, Error> {
        let target = target(grant)?;
        let want = desired(grant, target);
        let name = grant.request.key().as_str().to_owned();
        let reference = reference(target, &name);
        match &target.namespace {
            Some(namespace) => {
                let binding = RoleBinding {
                    metadata: want.metadata,
                    role_ref: want.role_ref,
                    subjects: Some(want.subjects),
                };
                let api = Api::<RoleBinding>::namespaced(self.client.clone(), namespace);
                let named = (
                    BindingKind::RoleBinding,
                    Some(namespace.clone()),
                    name.clone(),
                );
                self.own_apply(named, apply(&api, &name, &binding, &reference))
                    .await?;
            }
            None => {
                let binding = ClusterRoleBinding {
                    metadata: want.metadata,
                    role_ref: want.role_ref,
                    subjects: Some(want.subjects),
                };
                let api = Api::<ClusterRoleBinding>::all(self.client.clone());
                let named = (BindingKind::ClusterRoleBinding, None, name.clone());
                self.own_apply(named, apply(&api, &name, &binding, &reference))
                    .await?;
            }
        }
        self.wait_until_effective(grant, target).await;
        Ok(GrantRecord {
            target: Target::Kubernetes,
            reference,
            cloud_enforced_expiry: false,
            activity_lookup: None,
        })
    }

    async fn revoke(&self, request: &RequestRef) -> Result<(), Error> {
        // By label, across namespaces: the request's role may have moved or gone from the
        // policy since the grant, and revocation must not depend on it.
        // Each kind's bindings are deleted before the next kind is listed: a failing list of
        // the second kind does not hold back the first kind's revoke.
        for kind in BINDING_KINDS {
            let mut bindings = Vec::new();
            for_each_labelled_binding(
                &self.client,
                &[kind],
                managed_by_request(request),
                |binding, _| bindings.push(binding),
            )
            .await?;
            self.delete_all(bindings).await?;
        }
        Ok(())
    }

    async fn revoke_recorded(
        &self,
        request: &RequestRef,
        recorded: Option<&str>,
    ) -> Result<(), Error> {
        let known = self
            .bindings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .of_request(&request.uid);
        // Until the watch has listed every binding, search.
        let Some(mut bindings) = known else {
            return self.revoke(request).await;
        };
        // The status's record, whether or not the watch has shown it yet.
        if let Some(binding) = recorded.and_then(binding_of_reference)
            && !bindings.contains(&binding)
        {
            bindings.push(binding);
        }
        self.delete_all(bindings).await
    }

    fn watch(&self) -> Option<futures::stream::BoxStream<'static, (String, String)>> {
        Some(
            futures::stream::select(
                watch_kind(
                    Api::<PartialObjectMeta<RoleBinding>>::all(self.client.clone()),
                    BindingKind::RoleBinding,
                    self.bindings.clone(),
                ),
                watch_kind(
                    Api::<PartialObjectMeta<ClusterRoleBinding>>::all(self.client.clone()),
                    BindingKind::ClusterRoleBinding,
                    self.bindings.clone(),
                ),
            )
            .boxed(),
        )
    }

    async fn list_managed(&self) -> Result<Vec<String>, Error> {
        let managed = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        let mut uids = Vec::new();
        for_each_labelled_binding(&self.client, &BINDING_KINDS, managed, |_, labels| {
            uids.extend(labels.get(REQUEST_UID_LABEL).cloned());
        })
        .await?;
        Ok(uids)
    }

    async fn verify(&self, grant: &GrantSpec<'_>) -> Result<GrantState, Error> {
        let target = target(grant)?;
        let want = desired(grant, target);
        let name = grant.request.key().as_str().to_owned();
        let reference = reference(target, &name);
        let read = kubernetes_error("read", &reference);
        Ok(match &target.namespace {
            Some(namespace) => {
                match Api::<RoleBinding>::namespaced(self.client.clone(), namespace)
                    .get_opt(&name)
                    .await
                    .map_err(read)?
                {
                    None => GrantState::Missing,
                    Some(binding) if terminating(&binding) => GrantState::Missing,
                    Some(binding) => compare(&binding.role_ref, binding.subjects.as_ref(), &want),
                }
            }
            None => match Api::<ClusterRoleBinding>::all(self.client.clone())
                .get_opt(&name)
                .await
                .map_err(read)?
            {
                None => GrantState::Missing,
                Some(binding) if terminating(&binding) => GrantState::Missing,
                Some(binding) => compare(&binding.role_ref, binding.subjects.as_ref(), &want),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{crd::v1alpha1::PolicyRole, fixtures, provider::identity::Identity};

    fn role(namespace: Option<&str>) -> PolicyRole {
        PolicyRole {
            name: "view".into(),
            approvals_required: None,
            max_duration: None,
            kubernetes: Some(KubernetesTarget {
                cluster_role: "view".into(),
                namespace: namespace.map(str::to_owned),
            }),
            aws: None,
            gcp: None,
            azure: None,
        }
    }

    #[test]
    fn bindings_are_named_by_the_grant_key_and_labelled_with_the_request() {
        let request = RequestRef {
            uid: "0b7c9f7e".into(),
            namespace: "team-a".into(),
            name: "alice-view".into(),
        };
        let identity = Identity::bare(Subject::User("alice".into()));
        let role = role(Some("prod"));
        let grant = GrantSpec {
            request: &request,
            identity: &identity,
            role: &role,
            expires_at: fixtures::at("2026-01-01T01:00:00Z"),
            description: "",
            reason: "",
        };
        let want = desired(&grant, role.kubernetes.as_ref().unwrap());
        assert_eq!(want.metadata.name.as_deref(), Some("jit-0b7c9f7e"));
        assert_eq!(want.metadata.namespace.as_deref(), Some("prod"));
        let labels = want.metadata.labels.unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], "jit-operator");
        assert_eq!(labels[REQUEST_UID_LABEL], "0b7c9f7e");
        assert_eq!(
            want.metadata.annotations.unwrap()[REQUEST_ANNOTATION],
            "team-a/alice-view"
        );
        assert_eq!(want.role_ref.name, "view");
        assert_eq!(want.subjects[0].kind, "User");
        assert_eq!(
            reference(role.kubernetes.as_ref().unwrap(), "jit-0b7c9f7e"),
            "RoleBinding prod/jit-0b7c9f7e"
        );
        assert_eq!(
            reference(
                &KubernetesTarget {
                    cluster_role: "view".into(),
                    namespace: None
                },
                "x"
            ),
            "ClusterRoleBinding x"
        );
    }

    #[test]
    fn subjects_map_to_rbac_kinds() {
        assert_eq!(rbac_subject(&Subject::Group("oncall".into())).kind, "Group");
        let account = rbac_subject(&Subject::ServiceAccount {
            namespace: "ci".into(),
            name: "deployer".into(),
        });
        assert_eq!(
            (
                account.kind.as_str(),
                account.namespace.as_deref(),
                account.name.as_str()
            ),
            ("ServiceAccount", Some("ci"), "deployer")
        );
    }

    fn binding_meta(
        namespace: Option<&str>,
        name: &str,
        uid: Option<&str>,
    ) -> PartialObjectMeta<RoleBinding> {
        let mut labels = BTreeMap::from([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned())]);
        if let Some(uid) = uid {
            labels.insert(REQUEST_UID_LABEL.to_owned(), uid.to_owned());
        }
        PartialObjectMeta {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: namespace.map(str::to_owned),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            ..PartialObjectMeta::default()
        }
    }

    fn role_binding(namespace: &str, name: &str) -> BindingName {
        (
            BindingKind::RoleBinding,
            Some(namespace.to_owned()),
            name.to_owned(),
        )
    }

    #[test]
    fn the_operators_own_binding_changes_are_told_apart_from_anyone_elses() {
        let kind = BindingKind::RoleBinding;
        let binding = role_binding("a", "jit-1");
        let at = |version: &str| {
            let mut meta = binding_meta(Some("a"), "jit-1", Some("1"));
            meta.metadata.resource_version = Some(version.to_owned());
            meta
        };
        let mut index = ManagedBindings::default();
        // Nothing under way: every change is someone else's.
        assert!(!index.own_change(kind, &watcher::Event::Apply(at("1"))));
        assert!(!index.own_change(kind, &watcher::Event::Delete(at("2"))));

        // An apply whose change the watch reports after its response: only that version.
        index.expect(binding.clone(), OwnChange::Applying { seen: false });
        index.applied(&binding, Some("5".into()));
        assert!(
            !index.own_change(kind, &watcher::Event::Apply(at("4"))),
            "someone's edit before it"
        );
        index.expect(binding.clone(), OwnChange::Applying { seen: false });
        index.applied(&binding, Some("7".into()));
        assert!(index.own_change(kind, &watcher::Event::Apply(at("7"))));
        assert!(
            !index.own_change(kind, &watcher::Event::Apply(at("8"))),
            "an edit after it"
        );

        // One the watch reports before its response: the first change while it runs.
        index.expect(binding.clone(), OwnChange::Applying { seen: false });
        assert!(index.own_change(kind, &watcher::Event::Apply(at("9"))));
        assert!(!index.own_change(kind, &watcher::Event::Apply(at("10"))));
        index.applied(&binding, Some("9".into()));
        assert!(index.own.is_empty(), "nothing left once seen and answered");
        // A failed apply expects nothing.
        index.expect(binding.clone(), OwnChange::Applying { seen: false });
        index.applied(&binding, None);
        assert!(index.own.is_empty());

        // A delete: its Delete event, not an edit while it runs.
        index.expect(binding.clone(), OwnChange::Deleting);
        assert!(!index.own_change(kind, &watcher::Event::Apply(at("11"))));
        assert!(index.own_change(kind, &watcher::Event::Delete(at("12"))));
        assert!(!index.own_change(kind, &watcher::Event::Delete(at("12"))));
        // One that found nothing to delete expects nothing.
        index.expect(binding.clone(), OwnChange::Deleting);
        index.not_deleted(&binding);
        assert!(index.own.is_empty());
        // Another binding is never the operator's by this one's change.
        index.expect(role_binding("a", "jit-2"), OwnChange::Deleting);
        assert!(!index.own_change(kind, &watcher::Event::Delete(at("13"))));
        assert!(!index.own_change(kind, &watcher::Event::InitApply(at("13"))));
    }

    #[test]
    fn the_binding_index_knows_nothing_until_both_kinds_are_listed_then_follows_the_watch() {
        let mut index = ManagedBindings::default();
        let kind = BindingKind::RoleBinding;
        index.take::<RoleBinding>(kind, &watcher::Event::Init);
        index.take(
            kind,
            &watcher::Event::InitApply(binding_meta(Some("a"), "jit-1", Some("1"))),
        );
        index.take(
            kind,
            &watcher::Event::InitApply(binding_meta(Some("b"), "jit-1", Some("1"))),
        );
        index.take::<RoleBinding>(kind, &watcher::Event::InitDone);
        assert_eq!(
            index.of_request("1"),
            None,
            "cluster role bindings not listed yet"
        );
        let cluster = BindingKind::ClusterRoleBinding;
        index.take::<ClusterRoleBinding>(cluster, &watcher::Event::Init);
        index.take::<ClusterRoleBinding>(cluster, &watcher::Event::InitDone);
        let mut found = index.of_request("1").unwrap();
        found.sort();
        assert_eq!(
            found,
            vec![role_binding("a", "jit-1"), role_binding("b", "jit-1")]
        );
        assert_eq!(index.of_request("2"), Some(vec![]));

        // Deleted, relabelled, added.
        index.take(
            kind,
            &watcher::Event::Delete(binding_meta(Some("a"), "jit-1", Some("1"))),
        );
        index.take(
            kind,
            &watcher::Event::Apply(binding_meta(Some("b"), "jit-1", Some("2"))),
        );
        index.take(
            kind,
            &watcher::Event::Apply(binding_meta(Some("c"), "jit-3", Some("3"))),
        );
        assert_eq!(index.of_request("1"), Some(vec![]));
        assert_eq!(
            index.of_request("2"),
            Some(vec![role_binding("b", "jit-1")])
        );

        // Listed again after the watch lost its place: what went meanwhile is forgotten.
        index.take::<RoleBinding>(kind, &watcher::Event::Init);
        index.take(
            kind,
            &watcher::Event::InitApply(binding_meta(Some("b"), "jit-1", Some("2"))),
        );
        index.take::<RoleBinding>(kind, &watcher::Event::InitDone);
        assert_eq!(index.of_request("3"), Some(vec![]));
        assert_eq!(
            index.of_request("2"),
            Some(vec![role_binding("b", "jit-1")])
        );
        // A binding that lost its label is no longer the request's.
        index.take(
            kind,
            &watcher::Event::Apply(binding_meta(Some("b"), "jit-1", None)),
        );
        assert_eq!(index.of_request("2"), Some(vec![]));
    }

    #[test]
    fn a_grant_reference_names_its_binding() {
        assert_eq!(
            binding_of_reference("RoleBinding team/jit-1"),
            Some(role_binding("team", "jit-1"))
        );
        assert_eq!(
            binding_of_reference("ClusterRoleBinding jit-1"),
            Some((BindingKind::ClusterRoleBinding, None, "jit-1".to_owned()))
        );
        assert_eq!(binding_of_reference("RoleBinding jit-1"), None);
        assert_eq!(binding_of_reference("Secret team/x"), None);
        // The reference of every grant parses back to the same binding.
        let namespaced = KubernetesTarget {
            cluster_role: "view".into(),
            namespace: Some("team".into()),
        };
        assert_eq!(
            binding_of_reference(&reference(&namespaced, "jit-1")),
            Some(role_binding("team", "jit-1"))
        );
    }
}
