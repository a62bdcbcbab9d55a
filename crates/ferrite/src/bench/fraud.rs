//! The fraud-scoring RPCs' requests: real transactions of the sample data, each encoded once
//! (like the model RPCs' requests), and of each answer only what the report counts decoded.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use ferrite_features::ParquetSource;
use ferrite_proto::ferrite::v1::{
    GetOnlineFeaturesRequest, ScoreFraudRequest, Value, ValueList, get_online_features_request,
    score_fraud_request, value,
};
use polars::prelude::{DataType, IdxSize, TimeUnit, col};
use prost::Message;
use prost::bytes::{BufMut, Bytes, BytesMut};

use super::rpc::Encoded;

/// The columns of `transactions.parquet` a request is built from.
const COLUMNS: [&str; 7] = [
    "transaction_id",
    "user_id",
    "merchant_id",
    "amount",
    "currency",
    "device_type",
    "event_timestamp",
];

/// Encoded `ScoreFraudRequest`s, one per transaction; a key picks one.
#[derive(Debug)]
pub struct Transactions {
    encoded: Vec<Bytes>,
}

/// The feature service the fraud pipeline reads (`pipelines/fraud.toml`).
const FRAUD_SERVICE: &str = "fraud_v2";

impl Transactions {
    /// The first `limit` transactions of the Parquet file at `path` (keys beyond them wrap
    /// around, so only as many as keys can pick are encoded).
    pub fn load(path: &Path, limit: u64) -> anyhow::Result<Self> {
        let frame = ParquetSource::new(path)
            .scan_columns(&COLUMNS)?
            .limit(IdxSize::try_from(limit).unwrap_or(IdxSize::MAX).max(1))
            .with_column(
                col("event_timestamp")
                    .dt()
                    .timestamp(TimeUnit::Microseconds)
                    .cast(DataType::Int64),
            )
            .collect()
            .with_context(|| format!("cannot read transactions from {}", path.display()))?;
        let int = |name: &str| -> anyhow::Result<Vec<Option<i64>>> {
            let c = frame.column(name)?.cast(&DataType::Int64)?;
            Ok(c.i64()?.iter().collect())
        };
        let text = |name: &str| -> anyhow::Result<Vec<String>> {
            let c = frame.column(name)?.cast(&DataType::String)?;
            Ok(c.str()?
                .iter()
                .map(|s| s.unwrap_or_default().to_string())
                .collect())
        };
        let (ids, users, merchants, times) = (
            int("transaction_id")?,
            int("user_id")?,
            int("merchant_id")?,
            int("event_timestamp")?,
        );
        let amounts: Vec<Option<f64>> = frame
            .column("amount")?
            .cast(&DataType::Float64)?
            .f64()?
            .iter()
            .collect();
        let (currencies, devices) = (text("currency")?, text("device_type")?);
        let encoded: Vec<Bytes> = (0..frame.height())
            .map(|i| {
                ScoreFraudRequest {
                    transaction_id: ids[i].map(|t| t.to_string()).unwrap_or_default(),
                    user: users[i].map(score_fraud_request::User::UserIdInt),
                    merchant: merchants[i].map(score_fraud_request::Merchant::MerchantIdInt),
                    amount: amounts[i].unwrap_or(0.0),
                    currency: currencies[i].clone(),
                    device_type: devices[i].clone(),
                    event_time_us: times[i].unwrap_or(0),
                    ..Default::default()
                }
                .encode_to_vec()
                .into()
            })
            .collect();
        anyhow::ensure!(!encoded.is_empty(), "{} holds no transactions", path.display());
        Ok(Transactions { encoded })
    }

    #[cfg(test)]
    fn from_requests(requests: &[ScoreFraudRequest]) -> Self {
        Transactions {
            encoded: requests.iter().map(|r| r.encode_to_vec().into()).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.encoded.len()
    }

    fn pick(&self, key: u64) -> &Bytes {
        &self.encoded[(key.saturating_sub(1) % self.encoded.len() as u64) as usize]
    }

    /// The feature read the ScoreFraud call of key `key` makes: feature service `fraud_v2`
    /// for its user and merchant, its amount, currency, device and time as request context.
    pub fn read(&self, key: u64) -> GetOnlineFeaturesRequest {
        // Decoded from the encoded call, so that only the calls are kept.
        let t = ScoreFraudRequest::decode(self.pick(key).as_ref()).unwrap_or_default();
        let one = |kind: value::Kind| ValueList {
            values: vec![Value { kind: Some(kind) }],
        };
        let id = |v: Option<i64>| one(value::Kind::IntValue(v.unwrap_or(0)));
        let user = match t.user {
            Some(score_fraud_request::User::UserIdInt(i)) => Some(i),
            _ => None,
        };
        let merchant = match t.merchant {
            Some(score_fraud_request::Merchant::MerchantIdInt(i)) => Some(i),
            _ => None,
        };
        GetOnlineFeaturesRequest {
            selection: Some(get_online_features_request::Selection::FeatureService(
                FRAUD_SERVICE.into(),
            )),
            entities: HashMap::from([
                ("user_id".to_string(), id(user)),
                ("merchant_id".to_string(), id(merchant)),
            ]),
            request_context: HashMap::from([
                ("amount".to_string(), one(value::Kind::FloatValue(t.amount))),
                ("currency".to_string(), one(value::Kind::StringValue(t.currency))),
                (
                    "device_type".to_string(),
                    one(value::Kind::StringValue(t.device_type)),
                ),
                (
                    "event_timestamp".to_string(),
                    one(value::Kind::IntValue(t.event_time_us)),
                ),
            ]),
            columnar: false,
        }
    }

    /// The request for key `key` (keys start at 1).
    pub fn single(&self, key: u64) -> Encoded {
        Encoded(self.pick(key).clone())
    }

    /// A `ScoreFraudBatchRequest` of the transactions of keys `key..key + n`: each one is
    /// field 1 of the batch, so the batch is their encodings, each behind a tag and length.
    pub fn batch(&self, key: u64, n: usize) -> Encoded {
        let parts: Vec<&Bytes> = (0..n as u64).map(|i| self.pick(key + i)).collect();
        let len: usize = parts
            .iter()
            .map(|p| 1 + prost::encoding::encoded_len_varint(p.len() as u64) + p.len())
            .sum();
        let mut buf = BytesMut::with_capacity(len);
        for p in parts {
            // Field 1, wire type 2 (length-delimited).
            buf.put_u8(0x0a);
            prost::encoding::encode_varint(p.len() as u64, &mut buf);
            buf.put_slice(p);
        }
        Encoded(buf.freeze())
    }
}

/// The part of a `ScoreFraudResponse` the load generator reads.
#[derive(Clone, PartialEq, Message)]
pub struct FraudAnswer {
    #[prost(message, optional, tag = "2")]
    pub meta: Option<MetaAnswer>,
}

/// The part of a `ResponseMeta` the load generator reads.
#[derive(Clone, PartialEq, Message)]
pub struct MetaAnswer {
    #[prost(bool, tag = "4")]
    pub fallback: bool,
}

impl FraudAnswer {
    pub fn fallback(&self) -> bool {
        self.meta.as_ref().is_some_and(|m| m.fallback)
    }
}

/// The `meta` (a `ResponseMeta`) of an answer that has it at field `TAG` (Recommend: 2,
/// Price: 3), the only part of those answers the load generator reads.
#[derive(Clone, PartialEq, Default)]
pub struct MetaAt<const TAG: u32> {
    meta: Option<MetaAnswer>,
}

impl<const TAG: u32> MetaAt<TAG> {
    pub fn fallback(&self) -> bool {
        self.meta.as_ref().is_some_and(|m| m.fallback)
    }
}

impl<const TAG: u32> std::fmt::Debug for MetaAt<TAG> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaAt").field("meta", &self.meta).finish()
    }
}

impl<const TAG: u32> Message for MetaAt<TAG> {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(m) = &self.meta {
            prost::encoding::message::encode(TAG, m, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if tag == TAG {
            prost::encoding::message::merge(
                wire_type,
                self.meta.get_or_insert_with(Default::default),
                buf,
                ctx,
            )
        } else {
            prost::encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        self.meta
            .as_ref()
            .map_or(0, |m| prost::encoding::message::encoded_len(TAG, m))
    }

    fn clear(&mut self) {
        self.meta = None;
    }
}

/// The part of a `ScoreFraudBatchResponse` the load generator reads.
#[derive(Clone, PartialEq, Message)]
pub struct FraudBatchAnswer {
    #[prost(message, repeated, tag = "1")]
    pub results: Vec<FraudAnswer>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_proto::ferrite::v1::{ResponseMeta, ScoreFraudBatchRequest, ScoreFraudResponse};

    fn request(i: i64) -> ScoreFraudRequest {
        ScoreFraudRequest {
            transaction_id: i.to_string(),
            user: Some(score_fraud_request::User::UserIdInt(1_000_000 + i)),
            merchant: Some(score_fraud_request::Merchant::MerchantIdInt(2_000_000 + i)),
            amount: 10.5 * i as f64,
            currency: "EUR".into(),
            device_type: "ios".into(),
            event_time_us: 1_785_000_000_000_000 + i,
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_decodes_as_the_transactions_the_keys_pick_wrapping_around() {
        let all: Vec<_> = (1..=3).map(request).collect();
        let t = Transactions::from_requests(&all);
        let single = ScoreFraudRequest::decode(t.single(2).0).unwrap();
        assert_eq!(single, all[1]);
        let batch = ScoreFraudBatchRequest::decode(t.batch(2, 4).0).unwrap();
        let ids: Vec<&str> = batch
            .transactions
            .iter()
            .map(|r| r.transaction_id.as_str())
            .collect();
        assert_eq!(ids, ["2", "3", "1", "2"]);
        assert_eq!(batch.transactions[0], all[1]);
    }

    #[test]
    fn a_read_asks_for_the_fraud_service_with_the_transactions_keys_and_fields() {
        let all: Vec<_> = (1..=3).map(request).collect();
        let read = Transactions::from_requests(&all).read(5);
        assert_eq!(
            read.selection,
            Some(get_online_features_request::Selection::FeatureService(
                "fraud_v2".into()
            ))
        );
        let one = |list: &ValueList| list.values[0].kind.clone().unwrap();
        assert_eq!(one(&read.entities["user_id"]), value::Kind::IntValue(1_000_002));
        assert_eq!(
            one(&read.entities["merchant_id"]),
            value::Kind::IntValue(2_000_002)
        );
        let context = &read.request_context;
        assert_eq!(one(&context["amount"]), value::Kind::FloatValue(21.0));
        assert_eq!(one(&context["currency"]), value::Kind::StringValue("EUR".into()));
        assert_eq!(
            one(&context["device_type"]),
            value::Kind::StringValue("ios".into())
        );
        assert_eq!(
            one(&context["event_timestamp"]),
            value::Kind::IntValue(1_785_000_000_000_002)
        );
    }

    #[test]
    fn the_sample_transactions_become_requests_with_every_field() {
        let path = sample_transactions();
        let t = Transactions::load(&path, 50).unwrap();
        assert_eq!(t.len(), 50);
        for key in 1..=50 {
            let r = ScoreFraudRequest::decode(t.single(key).0).unwrap();
            assert!(r.transaction_id.parse::<i64>().unwrap() > 10_000_000, "{r:?}");
            assert!(matches!(r.user, Some(score_fraud_request::User::UserIdInt(u)) if u > 1_000_000));
            assert!(
                matches!(r.merchant, Some(score_fraud_request::Merchant::MerchantIdInt(m)) if m > 2_000_000)
            );
            assert!(r.amount > 0.0 && ["EUR", "USD", "GBP"].contains(&r.currency.as_str()));
            assert!(["web", "ios", "android"].contains(&r.device_type.as_str()));
            // In the sample's range, 2026-08-01 .. 2026-10-01 UTC.
            assert!((1_785_542_400_000_000..1_790_812_800_000_000).contains(&r.event_time_us));
        }
    }

    fn sample_transactions() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../features/data/transactions.parquet")
    }

    #[test]
    fn only_the_fallback_flag_is_read_from_an_answer() {
        let answer = |fallback| ScoreFraudResponse {
            score: 0.5,
            meta: Some(ResponseMeta {
                fallback,
                model_name: "m".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let one = FraudAnswer::decode(answer(true).encode_to_vec().as_slice()).unwrap();
        assert!(one.fallback());
        let none = FraudAnswer::decode(ScoreFraudResponse::default().encode_to_vec().as_slice()).unwrap();
        assert!(!none.fallback());
        let batch = ferrite_proto::ferrite::v1::ScoreFraudBatchResponse {
            results: vec![answer(false), answer(true), answer(true)],
        };
        let b = FraudBatchAnswer::decode(batch.encode_to_vec().as_slice()).unwrap();
        assert_eq!(b.results.iter().filter(|r| r.fallback()).count(), 2);
    }

    #[test]
    fn the_fallback_flag_is_read_from_recommend_and_price_answers() {
        use ferrite_proto::ferrite::v1::{PriceResponse, RecommendResponse, ScoredItem};
        let meta = |fallback| {
            Some(ResponseMeta {
                fallback,
                ..Default::default()
            })
        };
        let recs = |fallback| RecommendResponse {
            items: vec![ScoredItem {
                item_id: "3000001".into(),
                score: 0.5,
                ..Default::default()
            }],
            meta: meta(fallback),
            retrieved: 200,
            retrieval_plan: "exact".into(),
        };
        for fallback in [false, true] {
            let got = MetaAt::<2>::decode(recs(fallback).encode_to_vec().as_slice()).unwrap();
            assert_eq!(got.fallback(), fallback);
            let price = PriceResponse {
                price: 9.99,
                meta: meta(fallback),
                bound: "none".into(),
                ..Default::default()
            };
            let got = MetaAt::<3>::decode(price.encode_to_vec().as_slice()).unwrap();
            assert_eq!(got.fallback(), fallback);
        }
        // An answer without meta is not a fallback.
        let bare = RecommendResponse::default().encode_to_vec();
        assert!(!MetaAt::<2>::decode(bare.as_slice()).unwrap().fallback());
    }
}
