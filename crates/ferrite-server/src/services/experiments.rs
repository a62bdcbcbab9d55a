//! ferrite.v1.ExperimentService: lists experiments with their canaries, answers assignments,
//! changes splits and reloads `experiments.directory`, all through the pipelines' experiments.

use std::sync::Arc;

use ferrite_experiments::assign::current_weights;
use ferrite_experiments::config::load_dir;
use ferrite_experiments::{CanaryView, ExperimentConfig, VariantKind};
use ferrite_pipelines::Experiments;
use ferrite_proto::ferrite::v1 as pb;
use ferrite_proto::ferrite::v1::experiment_service_server::ExperimentService;
use tonic::{Request, Response, Status};

use crate::AppState;

pub struct ExperimentsApi {
    state: Arc<AppState>,
}

impl ExperimentsApi {
    pub fn new(state: Arc<AppState>) -> Self {
        ExperimentsApi { state }
    }

    fn experiments(&self) -> Result<&Arc<Experiments>, Status> {
        self.state
            .pipelines
            .experiments()
            .ok_or_else(|| Status::failed_precondition("experiments are not enabled on this server"))
    }

    fn by_name(&self, name: &str) -> Result<ExperimentConfig, Status> {
        let all = self.experiments()?.assigner.experiments();
        all.iter().find(|e| e.name == name).cloned().ok_or_else(|| {
            let known: Vec<&str> = all.iter().map(|e| e.name.as_str()).collect();
            Status::not_found(format!(
                "experiment: no experiment named {name:?}; known: {known:?}"
            ))
        })
    }

    /// The model an experiment on `target` routes between: the pipeline's, or `target` itself
    /// (a KServe model name).
    fn model_of(&self, target: &str) -> String {
        self.state
            .pipelines
            .pipelines()
            .pipelines
            .get(target)
            .map_or(target.to_string(), |p| p.experiment_model().name.clone())
    }

    fn to_pb(&self, e: &ExperimentConfig, canaries: &[CanaryView]) -> pb::Experiment {
        let view = canaries.iter().find(|v| v.state.experiment == e.name);
        let share = view.map(|v| v.state.share);
        let current = current_weights(e, share.filter(|_| e.canary.is_some()));
        let weight_now = |name: &str| current.iter().find(|(n, _)| n == name).map_or(0.0, |w| w.1);
        let model = self.model_of(&e.target);
        let variants = e
            .variants
            .iter()
            .map(|v| pb::Variant {
                name: v.name.clone(),
                model_name: model.clone(),
                model_version: v.model_version.to_string(),
                weight: v.weight,
                shadow: v.kind == VariantKind::Shadow,
                current_weight: if v.kind == VariantKind::Shadow {
                    0.0
                } else {
                    weight_now(&v.name)
                },
            })
            .collect();
        let canary = e.canary.as_ref().map(|c| {
            let status = view.map_or("running".to_string(), |v| status_name(&v.state.status));
            pb::Canary {
                variant: c.variant.clone(),
                stable: c.stable.clone(),
                status,
                share: share.unwrap_or(0.0),
                canary_requests: view.map_or(0, |v| v.canary.requests),
                canary_errors: view.map_or(0, |v| v.canary.errors),
                stable_requests: view.map_or(0, |v| v.stable.requests),
                stable_errors: view.map_or(0, |v| v.stable.errors),
                log_evidence: view.map_or(0.0, |v| v.log_evidence),
                canary_p99_ms: view.and_then(|v| v.step_canary_p99_ms).unwrap_or(0.0),
                history: view
                    .map(|v| {
                        v.state
                            .history
                            .iter()
                            .map(|t| pb::CanaryTransition {
                                at_ms: t.at_ms,
                                from_share: t.from_share,
                                to_share: t.to_share,
                                status: status_name(&t.status),
                                reason: t.reason.clone(),
                                replica: t.replica.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        });
        let state = canary
            .as_ref()
            .map_or("running".to_string(), |c| c.status.clone());
        pb::Experiment {
            name: e.name.clone(),
            variants,
            state,
            target: e.target.clone(),
            unit: e.unit.clone(),
            coverage: e.coverage,
            bucket_version: e.bucket_version,
            seed: e.effective_seed(),
            canary,
        }
    }
}

fn status_name(s: &ferrite_experiments::state::CanaryStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[tonic::async_trait]
impl ExperimentService for ExperimentsApi {
    async fn list_experiments(
        &self,
        _request: Request<pb::ListExperimentsRequest>,
    ) -> Result<Response<pb::ListExperimentsResponse>, Status> {
        let Some(x) = self.state.pipelines.experiments() else {
            return Ok(Response::new(pb::ListExperimentsResponse::default()));
        };
        let canaries = x.canaries.list();
        let experiments = x
            .assigner
            .experiments()
            .iter()
            .map(|e| self.to_pb(e, &canaries))
            .collect();
        Ok(Response::new(pb::ListExperimentsResponse { experiments }))
    }

    async fn get_assignment(
        &self,
        request: Request<pb::GetAssignmentRequest>,
    ) -> Result<Response<pb::GetAssignmentResponse>, Status> {
        let r = request.into_inner();
        if r.unit_id.is_empty() {
            return Err(Status::invalid_argument(
                "unit_id: expected a unit id, got an empty string",
            ));
        }
        let e = self.by_name(&r.experiment)?;
        let forced = (!r.force_variant.is_empty()).then_some(r.force_variant.as_str());
        if let Some(f) = forced
            && e.variant(f).is_none_or(|v| v.kind == VariantKind::Shadow)
        {
            return Err(Status::invalid_argument(format!(
                "force_variant: {f:?} is not an arm of experiment {:?}; expected one of {:?}",
                e.name,
                e.arms().map(|v| v.name.clone()).collect::<Vec<_>>()
            )));
        }
        let a = self
            .experiments()?
            .assigner
            .assign(&e.target, &r.unit_id, forced)
            .ok_or_else(|| Status::not_found(format!("experiment: {:?} is no longer running", e.name)))?;
        let model = self.model_of(&e.target);
        Ok(Response::new(pb::GetAssignmentResponse {
            experiment: a.experiment.to_string(),
            variant: a.variant.name.to_string(),
            model_name: model,
            model_version: a.variant.model_version.to_string(),
            forced: a.forced,
            in_coverage: a.in_coverage,
            bucket: a.bucket,
        }))
    }

    async fn update_experiment(
        &self,
        request: Request<pb::UpdateExperimentRequest>,
    ) -> Result<Response<pb::UpdateExperimentResponse>, Status> {
        let r = request.into_inner();
        let x = self.experiments()?;
        let mut e = self.by_name(&r.experiment)?;
        if !r.weights.is_empty() {
            for name in r.weights.keys() {
                if e.arms().all(|v| &v.name != name) {
                    return Err(Status::invalid_argument(format!(
                        "weights: {name:?} is not an arm of experiment {:?}",
                        e.name
                    )));
                }
            }
            for v in e.variants.iter_mut().filter(|v| v.kind == VariantKind::Arm) {
                v.weight = *r.weights.get(&v.name).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "weights: arm {:?} has no weight; name every arm of the experiment",
                        v.name
                    ))
                })?;
            }
        }
        if let Some(c) = r.coverage {
            e.coverage = c;
        }
        if let Some(b) = r.bucket_version {
            e.bucket_version = b;
        }
        let all: Vec<ExperimentConfig> = x
            .assigner
            .experiments()
            .into_iter()
            .map(|old| if old.name == e.name { e.clone() } else { old })
            .collect();
        x.assigner
            .reload(all)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        tracing::info!(experiment = %e.name, coverage = e.coverage, bucket_version = e.bucket_version, "experiment split changed");
        let canaries = x.canaries.list();
        Ok(Response::new(pb::UpdateExperimentResponse {
            experiment: Some(self.to_pb(&e, &canaries)),
        }))
    }

    async fn reload_experiments(
        &self,
        _request: Request<pb::ReloadExperimentsRequest>,
    ) -> Result<Response<pb::ReloadExperimentsResponse>, Status> {
        let x = self.experiments()?;
        let dir = self.state.config.experiments.directory.clone();
        let configs = tokio::task::spawn_blocking(move || load_dir(&dir))
            .await
            .map_err(|e| Status::internal(format!("reload task failed: {e}")))?
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let names = configs.iter().map(|c| c.name.clone()).collect();
        x.assigner
            .reload(configs)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::ReloadExperimentsResponse {
            experiments: names,
        }))
    }
}
