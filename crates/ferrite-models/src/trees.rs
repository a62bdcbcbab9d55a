//! A tree ensemble read from an ONNX file's `TreeEnsembleClassifier` or
//! `TreeEnsembleRegressor` node and evaluated here, in Rust.
//!
//! ONNX Runtime stays the model that KServe calls answer with; this copy serves what a model
//! run per row does badly: leave-one-out explanations. Setting one feature to another value
//! changes only the trees whose path for the row tests that feature, so the score of each of
//! a row's 130 one-feature variants costs a few short walks instead of a 130-row run. Callers
//! compare [`TreeEnsemble::predict`] with the model's own answers before trusting it: the
//! explanations row by row, the fraud pipeline's scores on a thousand live rows, and only
//! where [`TreeEnsemble::computes`] says the graph adds nothing to the trees (see
//! `ferrite-pipelines`).

use std::collections::HashMap;

use prost::Message;

/// The few fields of ONNX's protobuf messages read here (field numbers from `onnx.proto`).
/// Everything else in the file (initializers, other attributes) is skipped by the decoder.
mod onnx_pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Model {
        #[prost(message, optional, tag = "7")]
        pub graph: Option<Graph>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Graph {
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<Node>,
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<Tensor>,
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfo>,
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfo>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueInfo {
        #[prost(string, tag = "1")]
        pub name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        #[prost(int64, repeated, tag = "1")]
        pub dims: Vec<i64>,
        #[prost(int32, tag = "2")]
        pub data_type: i32,
        #[prost(float, repeated, tag = "4")]
        pub float_data: Vec<f32>,
        #[prost(string, tag = "8")]
        pub name: String,
        #[prost(bytes = "vec", tag = "9")]
        pub raw_data: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Node {
        #[prost(string, repeated, tag = "1")]
        pub input: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub output: Vec<String>,
        #[prost(string, tag = "4")]
        pub op_type: String,
        #[prost(message, repeated, tag = "5")]
        pub attribute: Vec<Attribute>,
        #[prost(string, tag = "7")]
        pub domain: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Attribute {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(bytes = "vec", tag = "4")]
        pub s: Vec<u8>,
        #[prost(int64, tag = "3")]
        pub i: i64,
        #[prost(float, repeated, tag = "7")]
        pub floats: Vec<f32>,
        #[prost(int64, repeated, tag = "8")]
        pub ints: Vec<i64>,
        #[prost(bytes = "vec", repeated, tag = "9")]
        pub strings: Vec<Vec<u8>>,
    }
}

/// How a branch node compares the row's value `x` with its threshold `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    Leaf,
}

impl Mode {
    fn parse(s: &[u8]) -> Option<Mode> {
        Some(match s {
            b"BRANCH_LEQ" => Mode::Leq,
            b"BRANCH_LT" => Mode::Lt,
            b"BRANCH_GTE" => Mode::Gte,
            b"BRANCH_GT" => Mode::Gt,
            b"BRANCH_EQ" => Mode::Eq,
            b"BRANCH_NEQ" => Mode::Neq,
            b"LEAF" => Mode::Leaf,
            _ => return None,
        })
    }
}

/// What turns the summed leaf values into the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostTransform {
    None,
    Logistic,
}

/// The graph input `ensemble` reads as it is, and the graph outputs its score output (a
/// classifier's probabilities, a regressor's values) reaches unchanged; `None` when the input
/// is not a graph input or the score reaches no output that way.
fn whole_path(graph: &onnx_pb::Graph, ensemble: &onnx_pb::Node) -> Option<(String, Vec<String>)> {
    let input = ensemble.input.first()?;
    if !graph.input.iter().any(|i| &i.name == input) {
        return None;
    }
    let score = ensemble
        .output
        .get(usize::from(ensemble.op_type == "TreeEnsembleClassifier"))?;
    let outputs = graph
        .output
        .iter()
        .filter(|o| carries(graph, &o.name, score, 0))
        .map(|o| o.name.clone())
        .collect::<Vec<_>>();
    (!outputs.is_empty()).then(|| (input.clone(), outputs))
}

/// Whether value `name` is value `source` passed through operators that keep every value
/// (at most 16 of them).
fn carries(graph: &onnx_pb::Graph, name: &str, source: &str, depth: usize) -> bool {
    if name == source {
        return true;
    }
    if depth >= 16 {
        return false;
    }
    let Some(node) = graph.node.iter().find(|n| n.output.iter().any(|o| o == name)) else {
        return false;
    };
    if !node.domain.is_empty() || node.output.len() != 1 {
        return false;
    }
    let from = match (node.op_type.as_str(), node.input.as_slice()) {
        ("Identity", [x]) => x,
        // To FLOAT (1).
        ("Cast", [x]) if node.attribute.iter().any(|a| a.name == "to" && a.i == 1) => x,
        ("Mul", [a, b]) if all_ones(graph, b) => a,
        ("Mul", [a, b]) if all_ones(graph, a) => b,
        _ => return false,
    };
    carries(graph, from, source, depth + 1)
}

/// Whether `name` is a float initializer whose every value is exactly 1.
fn all_ones(graph: &onnx_pb::Graph, name: &str) -> bool {
    let Some(t) = graph.initializer.iter().find(|t| t.name == name) else {
        return false;
    };
    // FLOAT (1), little-endian raw data or float_data.
    if t.data_type != 1 {
        return false;
    }
    let values: Vec<f32> = if t.raw_data.is_empty() {
        t.float_data.clone()
    } else {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    !values.is_empty() && values.iter().all(|&v| v == 1.0)
}

#[derive(Debug, Clone, Copy)]
struct Node {
    mode: Mode,
    /// Index of the feature tested (branches).
    feature: u32,
    threshold: f32,
    /// A missing value (NaN) takes the true branch.
    missing_true: bool,
    /// Indexes into `TreeEnsemble::nodes` (branches).
    yes: u32,
    no: u32,
    /// The leaf's value (leaves).
    value: f64,
}

/// A binary classifier's or a single-target regressor's trees.
#[derive(Debug, Clone)]
pub struct TreeEnsemble {
    nodes: Vec<Node>,
    roots: Vec<u32>,
    base: f64,
    post: PostTransform,
    /// One more than the highest feature index any node tests.
    width: usize,
    /// When the ensemble reads a graph input as it is: that input's name, and the graph
    /// outputs that carry the ensemble's score output unchanged (through `Identity`, a `Cast`
    /// to float, a `Mul` by an initializer of ones).
    whole: Option<(String, Vec<String>)>,
}

/// Why a file's ensemble is not evaluated here (it is still served by ONNX Runtime).
pub type Unsupported = String;

impl TreeEnsemble {
    /// The ensemble of the ONNX model in `bytes`: `Ok(None)` when the graph has no tree
    /// ensemble node, `Err` naming what this evaluator does not handle (several ensembles,
    /// several classes or targets, an aggregate other than a sum, a transform other than
    /// none or logistic, attributes given as tensors).
    pub fn from_onnx(bytes: &[u8]) -> Result<Option<TreeEnsemble>, Unsupported> {
        let model = onnx_pb::Model::decode(bytes).map_err(|e| format!("not an ONNX model: {e}"))?;
        let graph = model.graph.unwrap_or_default();
        let nodes = &graph.node;
        let mut ensembles = nodes.iter().filter(|n| {
            n.domain == "ai.onnx.ml"
                && matches!(
                    n.op_type.as_str(),
                    "TreeEnsembleClassifier" | "TreeEnsembleRegressor"
                )
        });
        let Some(node) = ensembles.next() else {
            return Ok(None);
        };
        if ensembles.next().is_some() {
            return Err("more than one tree ensemble in the graph".into());
        }
        let mut ensemble = Self::from_node(node)?;
        ensemble.whole = whole_path(&graph, node);
        Ok(Some(ensemble))
    }

    /// Whether the model's output `output`, given its input `input`, is this ensemble's
    /// score and nothing else: the graph feeds `input` to the ensemble as it is and carries
    /// the ensemble's score output to `output` through operators that keep every value.
    /// (Which column of a classifier's probabilities equals [`TreeEnsemble::predict`] is
    /// for the caller to check against the model's answers.)
    pub fn computes(&self, input: &str, output: &str) -> bool {
        self.whole
            .as_ref()
            .is_some_and(|(i, outputs)| i == input && outputs.iter().any(|o| o == output))
    }

    fn from_node(node: &onnx_pb::Node) -> Result<TreeEnsemble, Unsupported> {
        let attrs: HashMap<&str, &onnx_pb::Attribute> =
            node.attribute.iter().map(|a| (a.name.as_str(), a)).collect();
        let ints = |name: &str| attrs.get(name).map_or(&[][..], |a| a.ints.as_slice());
        let floats = |name: &str| attrs.get(name).map_or(&[][..], |a| a.floats.as_slice());
        for tensor_form in [
            "nodes_values_as_tensor",
            "base_values_as_tensor",
            "target_weights_as_tensor",
            "class_weights_as_tensor",
            "nodes_hitrates_as_tensor",
        ] {
            if attrs.contains_key(tensor_form) {
                return Err(format!("attribute {tensor_form} is not read here"));
            }
        }
        let classifier = node.op_type == "TreeEnsembleClassifier";
        let prefix = if classifier { "class" } else { "target" };
        if !classifier {
            let aggregate = attrs
                .get("aggregate_function")
                .map_or(&b"SUM"[..], |a| a.s.as_slice());
            if aggregate != b"SUM" {
                return Err(format!(
                    "aggregate_function {} (only SUM is evaluated here)",
                    String::from_utf8_lossy(aggregate)
                ));
            }
        } else {
            let labels = ints("classlabels_int64s").len()
                + attrs.get("classlabels_strings").map_or(0, |a| a.strings.len());
            if labels != 2 {
                return Err(format!(
                    "{labels} class labels (only binary classifiers are evaluated here)"
                ));
            }
        }
        let outputs = ints(&format!("{prefix}_ids"));
        if outputs.iter().any(|&c| c != outputs[0]) {
            return Err(format!("leaves write several {prefix}es"));
        }
        let post = match attrs
            .get("post_transform")
            .map_or(&b"NONE"[..], |a| a.s.as_slice())
        {
            b"NONE" => PostTransform::None,
            b"LOGISTIC" => PostTransform::Logistic,
            other => return Err(format!("post_transform {}", String::from_utf8_lossy(other))),
        };
        let base = match floats("base_values") {
            [] => 0.0,
            [b] => f64::from(*b),
            many => {
                let at = outputs.first().map_or(0, |&c| c as usize);
                f64::from(*many.get(at).ok_or("base_values shorter than the class ids")?)
            }
        };

        let tree_ids = ints("nodes_treeids");
        let node_ids = ints("nodes_nodeids");
        let features = ints("nodes_featureids");
        let thresholds = floats("nodes_values");
        let yes = ints("nodes_truenodeids");
        let no = ints("nodes_falsenodeids");
        let modes = attrs.get("nodes_modes").map_or(&[][..], |a| a.strings.as_slice());
        let missing = ints("nodes_missing_value_tracks_true");
        let n = tree_ids.len();
        for (name, len) in [
            ("nodes_nodeids", node_ids.len()),
            ("nodes_featureids", features.len()),
            ("nodes_values", thresholds.len()),
            ("nodes_truenodeids", yes.len()),
            ("nodes_falsenodeids", no.len()),
            ("nodes_modes", modes.len()),
        ] {
            if len != n {
                return Err(format!("{name} has {len} entries, nodes_treeids {n}"));
            }
        }
        if !missing.is_empty() && missing.len() != n {
            return Err("nodes_missing_value_tracks_true does not match the nodes".into());
        }
        if n == 0 || n > u32::MAX as usize / 2 {
            return Err(format!("{n} nodes"));
        }
        let at: HashMap<(i64, i64), u32> = tree_ids
            .iter()
            .zip(node_ids)
            .enumerate()
            .map(|(i, (&t, &id))| ((t, id), i as u32))
            .collect();
        if at.len() != n {
            return Err("a (tree, node) id appears twice".into());
        }
        let child = |i: usize, id: i64| {
            at.get(&(tree_ids[i], id))
                .copied()
                .ok_or_else(|| format!("node {} of tree {} has no child {id}", node_ids[i], tree_ids[i]))
        };
        let mut nodes = Vec::with_capacity(n);
        let mut width = 0;
        for i in 0..n {
            let mode = Mode::parse(&modes[i])
                .ok_or_else(|| format!("node mode {}", String::from_utf8_lossy(&modes[i])))?;
            let feature = u32::try_from(features[i]).map_err(|_| format!("feature id {}", features[i]))?;
            let (y, f) = if mode == Mode::Leaf {
                (0, 0)
            } else {
                width = width.max(feature as usize + 1);
                (child(i, yes[i])?, child(i, no[i])?)
            };
            nodes.push(Node {
                mode,
                feature,
                threshold: thresholds[i],
                missing_true: missing.get(i).is_some_and(|&m| m != 0),
                yes: y,
                no: f,
                value: 0.0,
            });
        }
        let weights = floats(&format!("{prefix}_weights"));
        let leaf_trees = ints(&format!("{prefix}_treeids"));
        let leaf_nodes = ints(&format!("{prefix}_nodeids"));
        if weights.len() != leaf_trees.len()
            || weights.len() != leaf_nodes.len()
            || weights.len() != outputs.len()
        {
            return Err(format!(
                "the {prefix} weights, tree ids, node ids and ids differ in length"
            ));
        }
        for ((&t, &id), &w) in leaf_trees.iter().zip(leaf_nodes).zip(weights) {
            let i = *at
                .get(&(t, id))
                .ok_or_else(|| format!("a weight for node {id} of tree {t}, which does not exist"))?;
            if nodes[i as usize].mode != Mode::Leaf {
                return Err(format!("a weight for node {id} of tree {t}, which is not a leaf"));
            }
            nodes[i as usize].value += f64::from(w);
        }
        // Each tree's root is its one node no other node points to; every node must be
        // reached once from it (no cycles, nothing shared), so every walk ends at a leaf.
        let mut pointed = vec![false; n];
        for node in nodes.iter().filter(|n| n.mode != Mode::Leaf) {
            for c in [node.yes, node.no] {
                if std::mem::replace(&mut pointed[c as usize], true) {
                    return Err("a node has two parents".into());
                }
            }
        }
        let mut roots: Vec<u32> = Vec::new();
        let mut rooted = std::collections::HashSet::new();
        for i in (0..n).filter(|&i| !pointed[i]) {
            if !rooted.insert(tree_ids[i]) {
                return Err(format!("tree {} has more than one root", tree_ids[i]));
            }
            roots.push(i as u32);
        }
        let mut reached = 0usize;
        let mut stack: Vec<u32> = roots.clone();
        while let Some(i) = stack.pop() {
            reached += 1;
            let node = nodes[i as usize];
            if node.mode != Mode::Leaf {
                stack.extend([node.yes, node.no]);
            }
        }
        if reached != n {
            return Err("some nodes are not reached from any root".into());
        }
        Ok(TreeEnsemble {
            nodes,
            roots,
            base,
            post,
            width,
            whole: None,
        })
    }

    /// Rows need at least this many features.
    pub fn width(&self) -> usize {
        self.width
    }

    pub fn trees(&self) -> usize {
        self.roots.len()
    }

    pub fn post_transform(&self) -> PostTransform {
        self.post
    }

    fn goes_true(node: &Node, x: f32) -> bool {
        if x.is_nan() && node.missing_true {
            return true;
        }
        let t = node.threshold;
        match node.mode {
            Mode::Leq => x <= t,
            Mode::Lt => x < t,
            Mode::Gte => x >= t,
            Mode::Gt => x > t,
            Mode::Eq => x == t,
            Mode::Neq => x != t,
            Mode::Leaf => false,
        }
    }

    /// The leaf `row` reaches from `root`, with feature `changed.0` read as `changed.1`;
    /// `tested` is called with each feature tested on the way.
    fn walk(&self, root: u32, row: &[f32], changed: Option<(u32, f32)>, mut tested: impl FnMut(u32)) -> f64 {
        let mut node = &self.nodes[root as usize];
        while node.mode != Mode::Leaf {
            tested(node.feature);
            let x = match changed {
                Some((f, v)) if f == node.feature => v,
                _ => row[node.feature as usize],
            };
            let next = if Self::goes_true(node, x) {
                node.yes
            } else {
                node.no
            };
            node = &self.nodes[next as usize];
        }
        node.value
    }

    fn output(&self, raw: f64) -> f64 {
        match self.post {
            PostTransform::None => raw,
            PostTransform::Logistic => 1.0 / (1.0 + (-raw).exp()),
        }
    }

    fn check_width(&self, row: &[f32]) -> Result<(), String> {
        if row.len() < self.width {
            return Err(format!(
                "a row of {} features; the trees test feature {}",
                row.len(),
                self.width - 1
            ));
        }
        Ok(())
    }

    /// The ensemble's output for `row` (the sum of its leaves, plus the base value, through
    /// the post transform).
    pub fn predict(&self, row: &[f32]) -> Result<f64, String> {
        self.check_width(row)?;
        let raw: f64 = self.roots.iter().map(|&r| self.walk(r, row, None, |_| {})).sum();
        Ok(self.output(raw + self.base))
    }

    /// The output for `row` and, for each `(feature, value)` of `changes`, the output with
    /// that one feature set to `value` — what a model run on one copy of `row` per change
    /// would give. Only the trees whose path for `row` tests a changed feature are walked
    /// again.
    pub fn predict_changed(&self, row: &[f32], changes: &[(usize, f32)]) -> Result<(f64, Vec<f64>), String> {
        self.check_width(row)?;
        // Per feature, the change that sets it (the last one when several do; none do here).
        let mut change_of = vec![u32::MAX; self.width];
        for (i, &(f, _)) in changes.iter().enumerate() {
            if let Some(slot) = change_of.get_mut(f) {
                *slot = i as u32;
            }
        }
        let mut raw = self.base;
        let mut delta = vec![0.0f64; changes.len()];
        // The tree in which each change was last walked again (so a feature tested twice on
        // one path is walked once).
        let mut walked = vec![u32::MAX; changes.len()];
        let mut hit: Vec<u32> = Vec::new();
        for (t, &root) in self.roots.iter().enumerate() {
            hit.clear();
            let leaf = self.walk(root, row, None, |f| {
                let c = change_of[f as usize];
                if c != u32::MAX && walked[c as usize] != t as u32 {
                    walked[c as usize] = t as u32;
                    hit.push(c);
                }
            });
            raw += leaf;
            for &c in &hit {
                let (f, v) = changes[c as usize];
                let other = self.walk(root, row, Some((f as u32, v)), |_| {});
                delta[c as usize] += other - leaf;
            }
        }
        let others = delta.iter().map(|d| self.output(raw + d)).collect();
        Ok((self.output(raw), others))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr_ints(name: &str, v: &[i64]) -> onnx_pb::Attribute {
        onnx_pb::Attribute {
            name: name.into(),
            ints: v.to_vec(),
            ..Default::default()
        }
    }

    fn attr_floats(name: &str, v: &[f32]) -> onnx_pb::Attribute {
        onnx_pb::Attribute {
            name: name.into(),
            floats: v.to_vec(),
            ..Default::default()
        }
    }

    fn attr_strings(name: &str, v: &[&str]) -> onnx_pb::Attribute {
        onnx_pb::Attribute {
            name: name.into(),
            strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
            ..Default::default()
        }
    }

    /// Two regression trees over features 0..3, listed with tree 1 first and its nodes out
    /// of order: tree 0 is `x0 <= 0.5 ? (x1 < 2 ? 1 : 2) : 3` (NaN in x0 goes left);
    /// tree 1 is `x2 >= 1 ? 10 : 20`.
    fn two_trees(post: &str) -> Vec<u8> {
        let node = onnx_pb::Node {
            op_type: "TreeEnsembleRegressor".into(),
            domain: "ai.onnx.ml".into(),
            input: vec!["x".into()],
            output: vec!["y".into()],
            attribute: vec![
                attr_ints("nodes_treeids", &[1, 1, 1, 0, 0, 0, 0, 0]),
                attr_ints("nodes_nodeids", &[0, 1, 2, 0, 2, 1, 3, 4]),
                attr_ints("nodes_featureids", &[2, 0, 0, 0, 0, 1, 0, 0]),
                attr_floats("nodes_values", &[1.0, 0.0, 0.0, 0.5, 0.0, 2.0, 0.0, 0.0]),
                attr_strings(
                    "nodes_modes",
                    &[
                        "BRANCH_GTE",
                        "LEAF",
                        "LEAF",
                        "BRANCH_LEQ",
                        "LEAF",
                        "BRANCH_LT",
                        "LEAF",
                        "LEAF",
                    ],
                ),
                attr_ints("nodes_truenodeids", &[1, 0, 0, 1, 0, 3, 0, 0]),
                attr_ints("nodes_falsenodeids", &[2, 0, 0, 2, 0, 4, 0, 0]),
                attr_ints("nodes_missing_value_tracks_true", &[0, 0, 0, 1, 0, 0, 0, 0]),
                attr_ints("target_ids", &[0, 0, 0, 0, 0]),
                attr_ints("target_treeids", &[0, 0, 0, 1, 1]),
                attr_ints("target_nodeids", &[3, 4, 2, 1, 2]),
                attr_floats("target_weights", &[1.0, 2.0, 3.0, 10.0, 20.0]),
                attr_floats("base_values", &[0.5]),
                onnx_pb::Attribute {
                    name: "post_transform".into(),
                    s: post.as_bytes().to_vec(),
                    ..Default::default()
                },
            ],
        };
        onnx_pb::Model {
            graph: Some(onnx_pb::Graph {
                node: vec![node],
                input: vec![onnx_pb::ValueInfo { name: "x".into() }],
                output: vec![onnx_pb::ValueInfo { name: "y".into() }],
                ..Default::default()
            }),
        }
        .encode_to_vec()
    }

    #[test]
    fn walks_each_tree_by_its_modes_and_sends_missing_values_where_the_node_says() {
        let trees = TreeEnsemble::from_onnx(&two_trees("NONE")).unwrap().unwrap();
        assert_eq!((trees.trees(), trees.width()), (2, 3));
        // The graph is the regressor alone: its output is the trees' score.
        assert!(trees.computes("x", "y"));
        assert!(!trees.computes("x", "z") && !trees.computes("w", "y"));
        let p = |row: [f32; 3]| trees.predict(&row).unwrap();
        assert_eq!(p([0.0, 1.0, 1.0]), 1.0 + 10.0 + 0.5);
        assert_eq!(p([0.5, 2.0, 0.0]), 2.0 + 20.0 + 0.5);
        assert_eq!(p([0.6, 0.0, 5.0]), 3.0 + 10.0 + 0.5);
        // NaN: x0 tracks true (left); x1 and x2 do not, so their comparisons go false.
        assert_eq!(p([f32::NAN, f32::NAN, f32::NAN]), 2.0 + 20.0 + 0.5);
        assert!(trees.predict(&[0.0, 0.0]).unwrap_err().contains("feature 2"));

        let logistic = TreeEnsemble::from_onnx(&two_trees("LOGISTIC")).unwrap().unwrap();
        assert_eq!(logistic.post_transform(), PostTransform::Logistic);
        let want = 1.0 / (1.0 + (-11.5f64).exp());
        assert!((logistic.predict(&[0.0, 1.0, 1.0]).unwrap() - want).abs() < 1e-15);
    }

    #[test]
    fn each_changed_feature_gives_what_the_changed_row_gives() {
        let trees = TreeEnsemble::from_onnx(&two_trees("LOGISTIC")).unwrap().unwrap();
        let rows = [[0.0f32, 1.0, 1.0], [0.7, 3.0, 0.0], [f32::NAN, 2.0, 1.0]];
        let values = [0.5f32, 0.51, 2.0, -1.0, f32::NAN];
        for row in rows {
            let mut changes = Vec::new();
            for f in 0..3 {
                for &v in &values {
                    changes.push((f, v));
                }
            }
            // One change per call of a feature (as explanations make them), and all at once.
            let (score, others) = trees.predict_changed(&row, &changes[..1]).unwrap();
            assert_eq!(score, trees.predict(&row).unwrap());
            assert_eq!(others.len(), 1);
            for (f, v) in changes {
                let (_, others) = trees.predict_changed(&row, &[(f, v)]).unwrap();
                let mut changed = row;
                changed[f] = v;
                let want = trees.predict(&changed).unwrap();
                assert!(
                    (others[0] - want).abs() < 1e-12,
                    "row {row:?}, x{f} = {v}: {} vs {want}",
                    others[0]
                );
            }
        }
        let per_feature: Vec<(usize, f32)> = vec![(0, 0.9), (1, 0.0), (2, 3.0)];
        let row = [0.0f32, 1.0, 1.0];
        let (_, others) = trees.predict_changed(&row, &per_feature).unwrap();
        for (&(f, v), got) in per_feature.iter().zip(others) {
            let mut changed = row;
            changed[f] = v;
            assert!((got - trees.predict(&changed).unwrap()).abs() < 1e-12);
        }
    }

    #[test]
    fn graphs_without_ensembles_and_ensembles_not_evaluated_here_are_told_apart() {
        let empty = onnx_pb::Model {
            graph: Some(onnx_pb::Graph::default()),
        }
        .encode_to_vec();
        assert!(TreeEnsemble::from_onnx(&empty).unwrap().is_none());
        assert!(TreeEnsemble::from_onnx(b"\xff\xff not protobuf").is_err());

        let softmax = two_trees("SOFTMAX");
        assert!(TreeEnsemble::from_onnx(&softmax).unwrap_err().contains("SOFTMAX"));

        // A child that points back up (a cycle) is refused rather than walked forever.
        let mut model = onnx_pb::Model::decode(two_trees("NONE").as_slice()).unwrap();
        let node = &mut model.graph.as_mut().unwrap().node[0];
        let yes = node
            .attribute
            .iter_mut()
            .find(|a| a.name == "nodes_truenodeids")
            .unwrap();
        yes.ints[5] = 0; // tree 0's node 1 now points at the root
        assert!(TreeEnsemble::from_onnx(&model.encode_to_vec()).is_err());
    }
}
