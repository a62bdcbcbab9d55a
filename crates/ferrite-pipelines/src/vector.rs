//! Online feature values to the model's input rows: int and float as f32, bool as 1/0,
//! missing as NaN (what the training set's nulls become), unknown entities' features as the
//! pipeline's cold-start values.

use ferrite_features::serving::{AnswerSink, FeatureValue, Status};
use ferrite_features::{Micros, Value};

use crate::pipeline::Service;

/// The feature matrix of a call, row-major, and what the call learned about its rows.
pub struct Vectors<'a> {
    service: &'a Service,
    pub width: usize,
    pub data: Vec<f32>,
    /// Per row and entity: whether any of the entity's stored rows exists (even expired).
    known: Vec<bool>,
    /// Per row: the oldest event time of a present stored value.
    pub oldest: Vec<Option<Micros>>,
}

impl<'a> Vectors<'a> {
    pub fn new(service: &'a Service, rows: usize) -> Self {
        let width = service.refs.len();
        Vectors {
            service,
            width,
            data: vec![f32::NAN; rows * width],
            known: vec![false; rows * service.entities.len()],
            oldest: vec![None; rows],
        }
    }

    pub fn row(&self, row: usize) -> &[f32] {
        &self.data[row * self.width..(row + 1) * self.width]
    }

    /// True when some entity of `row` has no stored row in any view: its features took the
    /// cold-start values.
    pub fn cold_start(&self, row: usize) -> bool {
        let n = self.service.entities.len();
        self.known[row * n..(row + 1) * n].iter().any(|k| !k)
    }

    /// Cold-start values go where an unknown entity left a feature missing; done once the
    /// whole answer is in, when it is known which entities were found.
    pub fn finish(&mut self) {
        if self.service.cold_start.iter().all(Option::is_none) {
            return;
        }
        let n = self.service.entities.len();
        for row in 0..self.oldest.len() {
            for (f, default) in self.service.cold_start.iter().enumerate() {
                if let (Some(d), Some(e)) = (default, self.service.feature_entity[f])
                    && !self.known[row * n + e]
                {
                    self.data[row * self.width + f] = *d;
                }
            }
        }
    }
}

pub fn to_f32(v: &Value) -> f32 {
    match v {
        Value::Int(i) => *i as f32,
        Value::Float(x) => *x as f32,
        Value::Bool(b) => f32::from(u8::from(*b)),
        _ => f32::NAN,
    }
}

impl AnswerSink for Vectors<'_> {
    fn push(&mut self, row: usize, feature: usize, value: FeatureValue) {
        if let Some(e) = self.service.feature_entity[feature] {
            if value.status != Status::NotFound {
                self.known[row * self.service.entities.len() + e] = true;
            }
            if value.status == Status::Present
                && let Some(ts) = value.event_ts
            {
                let oldest = &mut self.oldest[row];
                *oldest = Some(oldest.map_or(ts, |o| o.min(ts)));
            }
        }
        if value.status == Status::Present {
            self.data[row * self.width + feature] = to_f32(&value.value);
        }
    }
}
