//! The RPCs `ferrite bench` can drive. Each later capability adds its own.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{OnceCell, mpsc, oneshot};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use ferrite_proto::ferrite::v1::feature_service_client::FeatureServiceClient;
use ferrite_proto::ferrite::v1::{
    FeatureList, FeatureStatus, GetOnlineFeaturesRequest, GetOnlineFeaturesResponse, PriceRequest,
    RecommendRequest, Value, ValueList, get_online_features_request, price_request, recommend_request, value,
};
use ferrite_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use ferrite_proto::inference::model_infer_request::InferInputTensor;
use ferrite_proto::inference::{ModelInferRequest, ServerLiveRequest};
use prost::Message;
use prost::bytes::Bytes;

use super::feast::FeastClient;
use super::fraud::{FraudAnswer, FraudBatchAnswer, MetaAt, Transactions};
use super::search::Queries;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rpc {
    /// grpc.health.v1.Health/Check: the empty-RPC floor every result is reported beside.
    Health,
    /// inference.GRPCInferenceService/ServerLive.
    ServerLive,
    /// inference.GRPCInferenceService/ModelInfer on the example `fraud_logreg` model, batch 1,
    /// raw little-endian input (as tritonclient sends it), features derived from the key.
    /// Like the streamed RPC, the load generator is lean so that the latency it reports is
    /// the server's: the 256 row sets `--with-raw` runs are encoded once (the key picks one),
    /// and of each answer only the number of outputs is decoded.
    ModelInfer,
    /// ModelInfer on the example `fraud_gbdt` (200 trees, 40 features), batch 1, raw input.
    ModelInferGbdt,
    /// The same requests on ModelStreamInfer: one bidirectional stream per connection that
    /// all callers pipeline their requests on (as tritonclient's streaming API does), each
    /// caller with one request in flight. The throughput benchmark, so the load generator is
    /// lean: the requests (the 256 row sets `--with-raw` runs) are encoded once, and of each
    /// answer only the error and the presence of a response are decoded.
    ModelStreamInferGbdt,
    /// ferrite.v1.FeatureService/GetOnlineFeatures: 1 user × 30 features (`user_stats:*` and
    /// `user_profile:*`), user id 1,000,000 + key (the sample data's ids).
    Features,
    /// GetOnlineFeatures: 100 users (ids from 1,000,000 + key) × the same 30 features.
    #[value(name = "features-100")]
    Features100,
    /// The same 100 × 30 call answered feature-major (`columnar`: packed arrays).
    #[value(name = "features-100-columnar")]
    Features100Columnar,
    /// ferrite.v1.ScoringService/ScoreFraud: one real transaction of `--transactions` (the
    /// sample's transactions.parquet), the key picking which; encoded once, like the model
    /// RPCs' requests. An answer whose `meta.fallback` is set counts as a fallback.
    ScoreFraud,
    /// ScoringService/ScoreFraudBatch: `--batch` consecutive transactions from the one the
    /// key picks. Fallbacks are counted per transaction.
    ScoreFraudBatch,
    /// GetOnlineFeatures of feature service `fraud_v2` for the transaction of
    /// `--transactions` the key picks (its user and merchant; its amount, currency, device and
    /// time as the request context): the online read a ScoreFraud call makes, to measure
    /// beside it.
    FeaturesFraud,
    /// GetOnlineFeatures of feature service `pricing_v1` for item 3,000,000 + key, one
    /// candidate price as its request context: the online read a Price call makes (run with
    /// `--keys 500`), to measure beside it.
    FeaturesPrice,
    /// GetOnlineFeatures of what a Recommend call reads of user 1,000,000 + key in one read:
    /// `recs_user_input:*` (feature service `recs_user_v1`) and the items bought in the last 30
    /// days (`user_taste:purchased_items_30d`).
    FeaturesRecs,
    /// GetOnlineFeatures of the live check a Recommend call makes of its 200 candidates:
    /// `item_features:stock_level` and `:is_active` of 200 items from 3,000,000 + key
    /// (wrapping within the sample's 500 items), columnar.
    FeaturesRecsItems,
    /// ScoringService/Recommend: 20 items for user 1,000,000 + key (the sample data's ids; run
    /// with `--keys 2000` for its users). An answer whose `meta.fallback` is set counts as a
    /// fallback.
    Recommend,
    /// ScoringService/Price: a price for item 3,000,000 + key (the sample data's ids; run with
    /// `--keys 500` for its items).
    Price,
    /// ferrite.v1.SearchService/VisualSearch with an image: the files of `--images`, the key
    /// picking which; `--top-k` items, within `--filter-category` when given.
    VisualSearch,
    /// VisualSearch with an embedding: the rows of `--queries` (a float32 `.npy`).
    VisualSearchEmbedding,
    /// Feast's feature server (`feast serve`), not Ferrite: `POST /get-online-features` over
    /// HTTP/1.1 with keep-alive, as JSON, for the call `features` makes: the same 30 features
    /// (`user_stats:*` and `user_profile:*` as `--feature-repo` defines them, named
    /// `view:feature`) of user 1,000,000 + key. An answer other than 200 is an error, counted
    /// under gRPC's code for its HTTP status (a 500 is `Unknown`); a value counts as present
    /// when its status is `PRESENT` and it is not null (Feast answers a user it has no row for
    /// with `PRESENT` nulls). One connection per call in flight (`--connections`
    /// does not apply); `--with-floor` alternates it with `feast-health`.
    FeastFeatures,
    /// Feast's feature server: `GET /health`, its empty call (the floor of `feast-features`).
    FeastHealth,
}

/// One model run of a pipeline call (`Rpc::pipeline_stages`): the model, its input's name
/// and width, and the rows one call gives it.
#[derive(Debug, Clone, Copy)]
pub struct Stage {
    pub model: &'static str,
    pub input: &'static str,
    pub width: usize,
    pub rows: usize,
}

/// A pipeline call's search over the item index: the vectors' width, the items, the
/// candidates asked for.
#[derive(Debug, Clone, Copy)]
pub struct Search {
    pub dim: usize,
    pub items: usize,
    pub k: usize,
}

/// What the load generator reads from an answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    /// Answers (of a batch call: transactions) that were the fallback, not a model output.
    pub fallbacks: u32,
    /// Feature reads: values in the answer, and how many of them were present (a read of an
    /// empty store answers as fast as it finds nothing, so a report says what it read).
    pub values: u32,
    pub present: u32,
}

impl Rpc {
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Health => "health",
            Rpc::ServerLive => "server-live",
            Rpc::ModelInfer => "model-infer",
            Rpc::ModelInferGbdt => "model-infer-gbdt",
            Rpc::ModelStreamInferGbdt => "model-stream-infer-gbdt",
            Rpc::Features => "features",
            Rpc::Features100 => "features-100",
            Rpc::Features100Columnar => "features-100-columnar",
            Rpc::ScoreFraud => "score-fraud",
            Rpc::ScoreFraudBatch => "score-fraud-batch",
            Rpc::FeaturesFraud => "features-fraud",
            Rpc::FeaturesPrice => "features-price",
            Rpc::FeaturesRecs => "features-recs",
            Rpc::FeaturesRecsItems => "features-recs-items",
            Rpc::Recommend => "recommend",
            Rpc::Price => "price",
            Rpc::VisualSearch => "visual-search",
            Rpc::VisualSearchEmbedding => "visual-search-embedding",
            Rpc::FeastFeatures => "feast-features",
            Rpc::FeastHealth => "feast-health",
        }
    }

    /// Whether the RPC is an HTTP/1.1 call to Feast's feature server rather than gRPC.
    pub fn is_feast(self) -> bool {
        matches!(self, Rpc::FeastFeatures | Rpc::FeastHealth)
    }

    /// The empty call `--with-floor` alternates the RPC with: the gRPC health check, or for
    /// Feast's feature server its own `GET /health`.
    pub fn floor(self) -> Rpc {
        if self.is_feast() {
            Rpc::FeastHealth
        } else {
            Rpc::Health
        }
    }

    /// For the model RPCs: the example model they call, its input's name and its width.
    pub fn model_input(self) -> Option<(&'static str, &'static str, usize)> {
        match self {
            Rpc::ModelInfer => Some(("fraud_logreg", "features", 8)),
            Rpc::ModelInferGbdt | Rpc::ModelStreamInferGbdt => Some(("fraud_gbdt", "X", 40)),
            _ => None,
        }
    }

    /// Whether the RPC sends the transactions of `--transactions`.
    pub fn takes_transactions(self) -> bool {
        matches!(self, Rpc::ScoreFraud | Rpc::ScoreFraudBatch | Rpc::FeaturesFraud)
    }

    /// The model `--with-raw` calls in process: a model RPC's, or for the fraud calls the
    /// fraud pipeline's (`fraud_txn_gbdt`, 130 features).
    pub fn raw_model(self) -> Option<(&'static str, &'static str, usize)> {
        match self {
            Rpc::ScoreFraud | Rpc::FeaturesFraud => Some(("fraud_txn_gbdt", "features", 130)),
            _ => self.model_input(),
        }
    }

    /// For the pipeline calls that run several models (Recommend, Price): each model run one
    /// call makes, at the rows it gives the model.
    pub fn pipeline_stages(self) -> &'static [Stage] {
        match self {
            Rpc::Price => &[Stage {
                model: "pricing_demand",
                input: "features",
                width: 29,
                rows: PRICE_CANDIDATES,
            }],
            Rpc::Recommend => &[
                Stage {
                    model: "recs_user_tower",
                    input: "features",
                    width: 32,
                    rows: 1,
                },
                Stage {
                    model: "recs_ranker",
                    input: "features",
                    width: 69,
                    rows: RECS_CANDIDATES,
                },
            ],
            _ => &[],
        }
    }

    /// The candidate search a Recommend call makes: the user tower's width, over the sample's
    /// items.
    pub fn pipeline_search(self) -> Option<Search> {
        (self == Rpc::Recommend).then_some(Search {
            dim: 32,
            items: SAMPLE_ITEMS as usize,
            k: RECS_CANDIDATES,
        })
    }

    /// Whether the RPC sends the search queries of `--images` or `--queries`.
    pub fn takes_queries(self) -> bool {
        matches!(self, Rpc::VisualSearch | Rpc::VisualSearchEmbedding)
    }

    /// One call. `key` is the entity id for RPCs that take one.
    pub async fn call(self, target: &Target, key: u64) -> Result<Outcome, tonic::Status> {
        let channel = target.channel.clone();
        let model = |default: &'static str| target.model.as_deref().unwrap_or(default);
        match self {
            Rpc::Health => {
                HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?;
            }
            Rpc::ServerLive => {
                GrpcInferenceServiceClient::new(channel)
                    .server_live(ServerLiveRequest {})
                    .await?;
            }
            Rpc::ModelInfer | Rpc::ModelInferGbdt => {
                let (default, input, width) = self.model_input().expect("a model RPC");
                let slot = usize::from(self == Rpc::ModelInferGbdt);
                let pool = target.unary[slot]
                    .get_or_init(|| async { pool(model(default), input, width as u64, target.batch) })
                    .await;
                infer_unary(channel, pool[(key % POOL) as usize].clone()).await?;
            }
            Rpc::ModelStreamInferGbdt => {
                let stream = target
                    .stream
                    .get_or_try_init(|| InferStream::open(channel, model("fraud_gbdt"), target.batch))
                    .await?;
                stream.call(key).await?;
            }
            Rpc::Features | Rpc::Features100 | Rpc::Features100Columnar => {
                let (n, columnar) = match self {
                    Rpc::Features => (1, false),
                    Rpc::Features100 => (100, false),
                    _ => (100, true),
                };
                let answer = FeatureServiceClient::new(channel)
                    .get_online_features(features_request(key, n, columnar))
                    .await?
                    .into_inner();
                return Ok(counted(&answer));
            }
            Rpc::FeaturesFraud => {
                let transactions = target.transactions()?;
                let answer = FeatureServiceClient::new(channel)
                    .get_online_features(transactions.read(key))
                    .await?
                    .into_inner();
                return Ok(counted(&answer));
            }
            Rpc::FeaturesPrice | Rpc::FeaturesRecs | Rpc::FeaturesRecsItems => {
                let answer = FeatureServiceClient::new(channel)
                    .get_online_features(pipeline_read(self, key))
                    .await?
                    .into_inner();
                return Ok(counted(&answer));
            }
            Rpc::Recommend => {
                let request = RecommendRequest {
                    user: Some(recommend_request::User::UserIdInt(1_000_000 + key as i64)),
                    ..Default::default()
                };
                let answer: MetaAt<2> = unary(
                    channel,
                    "/ferrite.v1.ScoringService/Recommend",
                    Encoded(request.encode_to_vec().into()),
                )
                .await?;
                return Ok(Outcome {
                    fallbacks: u32::from(answer.fallback()),
                    ..Outcome::default()
                });
            }
            Rpc::Price => {
                let request = PriceRequest {
                    item: Some(price_request::Item::ItemIdInt(3_000_000 + key as i64)),
                    ..Default::default()
                };
                let answer: MetaAt<3> = unary(
                    channel,
                    "/ferrite.v1.ScoringService/Price",
                    Encoded(request.encode_to_vec().into()),
                )
                .await?;
                return Ok(Outcome {
                    fallbacks: u32::from(answer.fallback()),
                    ..Outcome::default()
                });
            }
            Rpc::VisualSearch | Rpc::VisualSearchEmbedding => {
                let queries = target
                    .queries
                    .as_deref()
                    .ok_or_else(|| tonic::Status::failed_precondition("no search queries loaded"))?;
                let answer: MetaAt<2> = unary(
                    channel,
                    "/ferrite.v1.SearchService/VisualSearch",
                    queries.get(key),
                )
                .await?;
                return Ok(Outcome {
                    fallbacks: u32::from(answer.fallback()),
                    ..Outcome::default()
                });
            }
            Rpc::FeastFeatures | Rpc::FeastHealth => {
                let feast = target
                    .feast
                    .as_deref()
                    .ok_or_else(|| tonic::Status::failed_precondition("no Feast client made"))?;
                return if self == Rpc::FeastFeatures {
                    feast.features(key).await
                } else {
                    feast.health().await
                };
            }
            Rpc::ScoreFraud | Rpc::ScoreFraudBatch => {
                let transactions = target.transactions()?;
                let fallbacks = if self == Rpc::ScoreFraud {
                    let answer: FraudAnswer = unary(
                        channel,
                        "/ferrite.v1.ScoringService/ScoreFraud",
                        transactions.single(key),
                    )
                    .await?;
                    u32::from(answer.fallback())
                } else {
                    let answer: FraudBatchAnswer = unary(
                        channel,
                        "/ferrite.v1.ScoringService/ScoreFraudBatch",
                        transactions.batch(key, target.batch),
                    )
                    .await?;
                    if answer.results.len() != target.batch {
                        return Err(tonic::Status::internal(format!(
                            "{} answers to {} transactions",
                            answer.results.len(),
                            target.batch
                        )));
                    }
                    answer.results.iter().filter(|r| r.fallback()).count() as u32
                };
                return Ok(Outcome {
                    fallbacks,
                    ..Outcome::default()
                });
            }
        }
        Ok(Outcome::default())
    }
}

/// A feature read's values, and how many of them were present.
fn counted(answer: &GetOnlineFeaturesResponse) -> Outcome {
    let statuses = answer
        .results
        .iter()
        .map(|r| &r.statuses)
        .chain(answer.columns.iter().map(|c| &c.statuses))
        .flatten();
    let (mut values, mut present) = (0, 0);
    for s in statuses {
        values += 1;
        present += u32::from(*s == FeatureStatus::Present as i32);
    }
    Outcome {
        values,
        present,
        ..Outcome::default()
    }
}

/// 30 user features for `n` users with consecutive ids from 1,000,000 + key.
fn features_request(key: u64, n: u64, columnar: bool) -> GetOnlineFeaturesRequest {
    let ids = (0..n)
        .map(|i| Value {
            kind: Some(value::Kind::IntValue(1_000_000 + (key + i) as i64)),
        })
        .collect();
    GetOnlineFeaturesRequest {
        selection: Some(get_online_features_request::Selection::Features(FeatureList {
            features: vec!["user_stats:*".into(), "user_profile:*".into()],
        })),
        entities: [("user_id".to_string(), ValueList { values: ids })].into(),
        request_context: Default::default(),
        columnar,
    }
}

/// The online read of a Price or Recommend call (`FeaturesPrice`, `FeaturesRecs`,
/// `FeaturesRecsItems`) for key `key` (keys start at 1).
fn pipeline_read(rpc: Rpc, key: u64) -> GetOnlineFeaturesRequest {
    let ints = |ids: &mut dyn Iterator<Item = u64>| ValueList {
        values: ids
            .map(|id| Value {
                kind: Some(value::Kind::IntValue(id as i64)),
            })
            .collect(),
    };
    let features = |names: &[&str]| {
        get_online_features_request::Selection::Features(FeatureList {
            features: names.iter().map(|n| n.to_string()).collect(),
        })
    };
    let (selection, entities, request_context) = match rpc {
        Rpc::FeaturesPrice => (
            get_online_features_request::Selection::FeatureService(PRICE_SERVICE.into()),
            ("item_id", ints(&mut std::iter::once(3_000_000 + key))),
            HashMap::from([(
                "price".to_string(),
                ValueList {
                    values: vec![Value {
                        kind: Some(value::Kind::FloatValue(10.0)),
                    }],
                },
            )]),
        ),
        Rpc::FeaturesRecs => (
            features(&["recs_user_input:*", "user_taste:purchased_items_30d"]),
            ("user_id", ints(&mut std::iter::once(1_000_000 + key))),
            HashMap::new(),
        ),
        _ => (
            features(&["item_features:stock_level", "item_features:is_active"]),
            (
                "item_id",
                ints(
                    &mut (0..RECS_CANDIDATES as u64)
                        .map(|i| 3_000_001 + (key.saturating_sub(1) + i) % SAMPLE_ITEMS),
                ),
            ),
            HashMap::new(),
        ),
    };
    GetOnlineFeaturesRequest {
        selection: Some(selection),
        entities: HashMap::from([(entities.0.to_string(), entities.1)]),
        request_context,
        columnar: rpc == Rpc::FeaturesRecsItems,
    }
}

/// `width` FP32 features in [0, 1), varied by the key so that calls differ.
pub fn features(width: u64, key: u64) -> Vec<f32> {
    (0..width)
        .map(|i| ((key.wrapping_mul(31).wrapping_add(i) % 97) as f32) / 97.0)
        .collect()
}

/// The rows of one request: `batch` rows of `width` FP32 features, varied by the key so that
/// calls differ (the same rows `--with-raw` gives the model).
pub fn rows(width: u64, key: u64, batch: usize) -> Vec<f32> {
    (0..batch as u64)
        .flat_map(|r| features(width, key.wrapping_mul(64).wrapping_add(r)))
        .collect()
}

/// A request of `batch` rows of `width` FP32 features, raw little-endian input.
fn infer_request(model: &str, input: &str, width: u64, key: u64, batch: usize) -> ModelInferRequest {
    let features = rows(width, key, batch);
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: input.into(),
            datatype: "FP32".into(),
            shape: vec![batch as i64, width as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![features.iter().flat_map(|x| x.to_le_bytes()).collect()],
        ..Default::default()
    }
}

/// Where calls go: one HTTP/2 connection (for the Feast RPCs: an HTTP/1.1 client), the model to call (for the model RPCs, instead of
/// the RPC's default) and the rows per model request, and the connection's inference stream
/// once a streaming RPC opened it.
pub struct Target {
    channel: Channel,
    model: Option<String>,
    batch: usize,
    stream: OnceCell<InferStream>,
    /// The encoded requests of ModelInfer (`fraud_logreg`) and of ModelInferGbdt.
    unary: [OnceCell<Vec<Encoded>>; 2],
    /// The fraud RPCs' transactions, shared by every connection.
    transactions: Option<Arc<Transactions>>,
    /// The search RPCs' queries, shared by every connection.
    queries: Option<Arc<Queries>>,
    /// The Feast RPCs' HTTP client (its own pool of connections).
    feast: Option<Arc<FeastClient>>,
}

impl Target {
    /// The fraud RPCs' transactions, or FAILED_PRECONDITION when none were loaded.
    fn transactions(&self) -> Result<&Transactions, tonic::Status> {
        self.transactions
            .as_deref()
            .ok_or_else(|| tonic::Status::failed_precondition("no transactions loaded"))
    }

    pub fn new(
        channel: Channel,
        model: Option<String>,
        batch: usize,
        transactions: Option<Arc<Transactions>>,
        queries: Option<Arc<Queries>>,
        feast: Option<Arc<FeastClient>>,
    ) -> Self {
        Target {
            channel,
            model,
            batch,
            stream: OnceCell::new(),
            unary: Default::default(),
            transactions,
            queries,
            feast,
        }
    }
}

/// How many different requests the model RPCs send: the same 256 row sets `--with-raw`
/// gives the model (`raw.rs`), each encoded once.
const POOL: u64 = 256;

/// The feature service the pricing pipeline reads (`pipelines/pricing.toml`).
const PRICE_SERVICE: &str = "pricing_v1";
/// The candidates a Recommend call retrieves and checks live (`pipelines/recommendations.toml`).
pub const RECS_CANDIDATES: usize = 200;
/// The candidate prices a Price call evaluates (`pipelines/pricing.toml`).
pub const PRICE_CANDIDATES: usize = 50;
/// Items in the sample catalogue (`features/data`, ids 3,000,001 to 3,000,500).
pub const SAMPLE_ITEMS: u64 = 500;

/// The `POOL` requests of a model RPC, encoded.
fn pool(model: &str, input: &str, width: u64, batch: usize) -> Vec<Encoded> {
    (0..POOL)
        .map(|k| {
            Encoded(
                infer_request(model, input, width, k, batch)
                    .encode_to_vec()
                    .into(),
            )
        })
        .collect()
}

/// The part of a `ModelInferResponse` the load generator reads: its outputs, each skipped.
#[derive(Clone, PartialEq, Message)]
struct InferAnswer {
    #[prost(message, repeated, tag = "5")]
    outputs: Vec<Skipped>,
}

/// One ModelInfer call with an encoded request; an answer without outputs is an error.
async fn infer_unary(channel: Channel, request: Encoded) -> Result<(), tonic::Status> {
    let answer: InferAnswer = unary(channel, "/inference.GRPCInferenceService/ModelInfer", request).await?;
    if answer.outputs.is_empty() {
        return Err(tonic::Status::internal("an answer without outputs"));
    }
    Ok(())
}

/// One unary call of `path` with an encoded request, decoding the answer as `A`.
async fn unary<A: Message + Default + Send + Sync + 'static>(
    channel: Channel,
    path: &'static str,
    request: Encoded,
) -> Result<A, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("the connection is not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    let codec = ferrite_proto::codec::SliceCodec::<Encoded, A>::default();
    Ok(grpc
        .unary(tonic::Request::new(request), path, codec)
        .await?
        .into_inner())
}

/// A message encoded once and sent as it is: on a machine the server shares, every instruction
/// the load generator spends building a message is taken from the server (the throughput
/// benchmark) and added to the latency it reports (the latency benchmarks).
#[derive(Debug, Clone, Default)]
pub struct Encoded(pub Bytes);

impl Message for Encoded {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// The part of a `ModelStreamInferResponse` the load generator reads: the error, and whether
/// an answer came (its tensors are skipped, not decoded).
#[derive(Clone, PartialEq, Message)]
struct StreamAnswer {
    #[prost(string, tag = "1")]
    error_message: String,
    #[prost(message, optional, tag = "2")]
    infer_response: Option<Skipped>,
}

/// A message whose fields are all skipped.
#[derive(Clone, PartialEq, Message)]
struct Skipped {}

type Answer = Result<StreamAnswer, tonic::Status>;

/// A ModelStreamInfer stream shared by many callers. The server answers a stream's requests
/// in order, so each answer goes to the oldest caller still waiting.
struct InferStream {
    /// Requests and their callers, queued under one lock so both orders agree.
    sender: Mutex<(mpsc::UnboundedSender<Encoded>, Arc<Mutex<Waiting>>)>,
    /// The requests, by key modulo `POOL`.
    pool: Vec<Encoded>,
}

type Waiting = VecDeque<oneshot::Sender<Answer>>;

impl InferStream {
    async fn open(channel: Channel, model: &str, batch: usize) -> Result<Self, tonic::Status> {
        let (_, input, width) = Rpc::ModelStreamInferGbdt.model_input().expect("a model RPC");
        let pool = pool(model, input, width as u64, batch);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("the connection is not ready: {e}")))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/inference.GRPCInferenceService/ModelStreamInfer",
        );
        let codec = ferrite_proto::codec::SliceCodec::<Encoded, StreamAnswer>::default();
        let request = tonic::Request::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
        let mut answers = grpc.streaming(request, path, codec).await?.into_inner();
        let waiting: Arc<Mutex<Waiting>> = Arc::default();
        let readers = waiting.clone();
        tokio::spawn(async move {
            let failure = loop {
                match answers.message().await {
                    Ok(Some(answer)) => {
                        let caller = readers.lock().expect("stream callers").pop_front();
                        if let Some(caller) = caller {
                            let _ = caller.send(Ok(answer));
                        }
                    }
                    Ok(None) => break tonic::Status::unavailable("the server ended the stream"),
                    Err(status) => break status,
                }
            };
            for caller in readers.lock().expect("stream callers").drain(..) {
                let _ = caller.send(Err(failure.clone()));
            }
        });
        Ok(InferStream {
            sender: Mutex::new((tx, waiting)),
            pool,
        })
    }

    async fn call(&self, key: u64) -> Result<(), tonic::Status> {
        let (reply, answer) = oneshot::channel();
        {
            let sender = self.sender.lock().expect("stream sender");
            sender.1.lock().expect("stream callers").push_back(reply);
            sender
                .0
                .send(self.pool[(key % POOL) as usize].clone())
                .map_err(|_| tonic::Status::unavailable("the stream is closed"))?;
        }
        let answer = answer
            .await
            .map_err(|_| tonic::Status::unavailable("the stream closed before the answer"))??;
        match (answer.error_message.is_empty(), answer.infer_response) {
            (true, Some(_)) => Ok(()),
            (true, None) => Err(tonic::Status::internal(
                "an answer with neither a response nor an error",
            )),
            (false, _) => Err(tonic::Status::unknown(answer.error_message)),
        }
    }
}
