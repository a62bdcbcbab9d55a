//! Request-time feature expressions: a small typed language over request fields and stored
//! features, e.g. `amount / user_stats.avg_amount_30d`.
//!
//! Hand-written rather than taken from an expression crate because the definitions need
//! static types (checked by `ferrite validate`, before any request) and SQL-like null
//! propagation, and because the request path evaluates a pre-resolved tree without
//! looking anything up by name.
//!
//! Grammar: `||` / `&&` / comparisons / `+ -` / `* / %` / unary `- !` / literals (numbers,
//! "strings", true, false, null) / `field` / `view.feature` / calls `abs min max log exp
//! sqrt coalesce if` / parentheses. Nulls propagate; `coalesce` and `if` stop them, and
//! `&&` / `||` short-circuit with SQL's three-valued logic (`false && null` is false).
//! Division by zero and non-finite results make the value invalid.

use crate::value::{DType, Value};

/// A name the expression reads: a request field or a stored feature.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    Request(String),
    Feature { view: String, feature: String },
}

impl std::fmt::Display for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Request(n) => f.write_str(n),
            Input::Feature { view, feature } => write!(f, "{view}.{feature}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Abs,
    Min,
    Max,
    Log,
    Exp,
    Sqrt,
    Coalesce,
    If,
}

#[derive(Debug, Clone)]
enum Node {
    Const(Value),
    /// Index into `Expr::inputs`.
    Input(usize),
    Neg(Box<Node>),
    Not(Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
}

/// A parsed, type-checked expression.
#[derive(Debug, Clone)]
pub struct Expr {
    root: Node,
    inputs: Vec<Input>,
    dtype: DType,
}

/// Why a value could not be computed (the feature's status becomes INVALID).
#[derive(Debug, Clone, PartialEq)]
pub struct EvalError(pub String);

impl Expr {
    /// Parses `text`; `type_of` gives the type of each input or says it does not exist.
    pub fn parse(text: &str, type_of: &dyn Fn(&Input) -> Result<DType, String>) -> Result<Expr, String> {
        let tokens = lex(text)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            inputs: Vec::new(),
        };
        let root = p.or()?;
        if p.pos < p.tokens.len() {
            return Err(format!(
                "unexpected {:?} after the end of the expression",
                p.tokens[p.pos]
            ));
        }
        let mut input_types = Vec::with_capacity(p.inputs.len());
        for input in &p.inputs {
            input_types.push(type_of(input)?);
        }
        let dtype = check(&root, &input_types)?.ok_or_else(|| "the expression is always null".to_string())?;
        Ok(Expr {
            root,
            inputs: p.inputs,
            dtype,
        })
    }

    /// The inputs in slot order: `eval` takes one value per input.
    pub fn inputs(&self) -> &[Input] {
        &self.inputs
    }

    /// The result type (an int expression may feed a float feature).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Evaluates with one value per input, in `inputs()` order.
    pub fn eval(&self, inputs: &[&Value]) -> Result<Value, EvalError> {
        eval(&self.root, inputs)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(Value),
    Str(String),
    Ident(String),
    Op(&'static str),
}

fn lex(text: &str) -> Result<Vec<Tok>, String> {
    const OPS: [&str; 19] = [
        "||", "&&", "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%", "!", "(", ")", ",", ".", "=",
    ];
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.' || bytes[i] == b'e') {
                // An exponent may carry a sign.
                if bytes[i] == b'e' && i + 1 < bytes.len() && (bytes[i + 1] == b'-' || bytes[i + 1] == b'+') {
                    i += 1;
                }
                i += 1;
            }
            let s = &text[start..i];
            let v = if s.contains(['.', 'e']) {
                Value::Float(s.parse().map_err(|_| format!("bad number {s:?}"))?)
            } else {
                Value::Int(s.parse().map_err(|_| format!("bad number {s:?}"))?)
            };
            out.push(Tok::Num(v));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(text[start..i].to_string()));
        } else if c == '"' || c == '\'' {
            let end = text[i + 1..]
                .find(c)
                .ok_or_else(|| format!("unterminated string starting at column {}", i + 1))?;
            out.push(Tok::Str(text[i + 1..i + 1 + end].to_string()));
            i += end + 2;
        } else if let Some(op) = OPS.iter().find(|op| text[i..].starts_with(**op)) {
            if *op == "=" {
                return Err(format!("'=' at column {}: use '==' to compare", i + 1));
            }
            out.push(Tok::Op(op));
            i += op.len();
        } else {
            return Err(format!("unexpected character {c:?} at column {}", i + 1));
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
    inputs: Vec<Input>,
}

impl Parser {
    fn peek_op(&self) -> Option<&'static str> {
        match self.tokens.get(self.pos) {
            Some(Tok::Op(op)) => Some(op),
            Some(Tok::Ident(w)) if w == "and" => Some("&&"),
            Some(Tok::Ident(w)) if w == "or" => Some("||"),
            _ => None,
        }
    }

    fn expect(&mut self, op: &str) -> Result<(), String> {
        if self.peek_op() == Some(op) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {op:?}, found {}", self.describe_next()))
        }
    }

    fn describe_next(&self) -> String {
        match self.tokens.get(self.pos) {
            None => "the end of the expression".into(),
            Some(t) => format!("{t:?}"),
        }
    }

    fn binary(
        &mut self,
        ops: &[(&str, BinOp)],
        next: fn(&mut Self) -> Result<Node, String>,
    ) -> Result<Node, String> {
        let mut left = next(self)?;
        while let Some(op) = self.peek_op().and_then(|o| ops.iter().find(|(s, _)| *s == o)) {
            self.pos += 1;
            let right = next(self)?;
            left = Node::Bin(op.1, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn or(&mut self) -> Result<Node, String> {
        self.binary(&[("||", BinOp::Or)], Self::and)
    }

    fn and(&mut self) -> Result<Node, String> {
        self.binary(&[("&&", BinOp::And)], Self::cmp)
    }

    fn cmp(&mut self) -> Result<Node, String> {
        let ops = [
            ("==", BinOp::Eq),
            ("!=", BinOp::Ne),
            ("<", BinOp::Lt),
            ("<=", BinOp::Le),
            (">", BinOp::Gt),
            (">=", BinOp::Ge),
        ];
        self.binary(&ops, Self::add)
    }

    fn add(&mut self) -> Result<Node, String> {
        self.binary(&[("+", BinOp::Add), ("-", BinOp::Sub)], Self::mul)
    }

    fn mul(&mut self) -> Result<Node, String> {
        self.binary(
            &[("*", BinOp::Mul), ("/", BinOp::Div), ("%", BinOp::Rem)],
            Self::unary,
        )
    }

    fn unary(&mut self) -> Result<Node, String> {
        match self.peek_op() {
            Some("-") => {
                self.pos += 1;
                Ok(Node::Neg(Box::new(self.unary()?)))
            }
            Some("!") => {
                self.pos += 1;
                Ok(Node::Not(Box::new(self.unary()?)))
            }
            _ => self.primary(),
        }
    }

    fn input(&mut self, input: Input) -> Node {
        let idx = match self.inputs.iter().position(|i| *i == input) {
            Some(i) => i,
            None => {
                self.inputs.push(input);
                self.inputs.len() - 1
            }
        };
        Node::Input(idx)
    }

    fn primary(&mut self) -> Result<Node, String> {
        let tok = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        match tok {
            Some(Tok::Num(v)) => Ok(Node::Const(v)),
            Some(Tok::Str(s)) => Ok(Node::Const(Value::Str(s))),
            Some(Tok::Op("(")) => {
                let e = self.or()?;
                self.expect(")")?;
                Ok(e)
            }
            Some(Tok::Ident(name)) => match name.as_str() {
                "true" => Ok(Node::Const(Value::Bool(true))),
                "false" => Ok(Node::Const(Value::Bool(false))),
                "null" => Ok(Node::Const(Value::Null)),
                _ if self.peek_op() == Some("(") => {
                    self.pos += 1;
                    let func = match name.as_str() {
                        "abs" => Func::Abs,
                        "min" => Func::Min,
                        "max" => Func::Max,
                        "log" => Func::Log,
                        "exp" => Func::Exp,
                        "sqrt" => Func::Sqrt,
                        "coalesce" => Func::Coalesce,
                        "if" => Func::If,
                        other => {
                            return Err(format!(
                                "unknown function {other:?}; known: abs, min, max, log, exp, sqrt, coalesce, if"
                            ));
                        }
                    };
                    let mut args = Vec::new();
                    if self.peek_op() != Some(")") {
                        loop {
                            args.push(self.or()?);
                            if self.peek_op() == Some(",") {
                                self.pos += 1;
                            } else {
                                break;
                            }
                        }
                    }
                    self.expect(")")?;
                    Ok(Node::Call(func, args))
                }
                _ if self.peek_op() == Some(".") => {
                    self.pos += 1;
                    match self.tokens.get(self.pos).cloned() {
                        Some(Tok::Ident(feature)) => {
                            self.pos += 1;
                            Ok(self.input(Input::Feature { view: name, feature }))
                        }
                        _ => Err(format!("expected a feature name after {name:?}.")),
                    }
                }
                _ => Ok(self.input(Input::Request(name))),
            },
            Some(t) => Err(format!("unexpected {t:?}")),
            None => Err("the expression ends too early".into()),
        }
    }
}

/// The static type of a node; `None` for the literal `null`.
fn check(node: &Node, inputs: &[DType]) -> Result<Option<DType>, String> {
    use DType::*;
    Ok(match node {
        Node::Const(v) => v.dtype(),
        Node::Input(i) => Some(inputs[*i]),
        Node::Neg(e) => match check(e, inputs)? {
            Some(t) if t.is_numeric() => Some(t),
            None => None,
            Some(t) => return Err(format!("'-' needs a number, got {t}")),
        },
        Node::Not(e) => match check(e, inputs)? {
            Some(Bool) | None => Some(Bool),
            Some(t) => return Err(format!("'!' needs a bool, got {t}")),
        },
        Node::Bin(op, l, r) => {
            let (lt, rt) = (check(l, inputs)?, check(r, inputs)?);
            let numeric = |t: Option<DType>| t.is_none_or(|t| t.is_numeric());
            match op {
                BinOp::Or | BinOp::And => {
                    if lt.is_some_and(|t| t != Bool) || rt.is_some_and(|t| t != Bool) {
                        return Err(format!("{op:?} needs bools, got {lt:?} and {rt:?}"));
                    }
                    Some(Bool)
                }
                BinOp::Eq | BinOp::Ne => {
                    let comparable = match (lt, rt) {
                        (Some(a), Some(b)) => a == b || (a.is_numeric() && b.is_numeric()),
                        _ => true,
                    };
                    if !comparable || lt == Some(FloatVector) {
                        return Err(format!("cannot compare {lt:?} with {rt:?}"));
                    }
                    Some(Bool)
                }
                BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                    let both_str = lt == Some(String) && rt == Some(String);
                    if !(both_str || numeric(lt) && numeric(rt)) {
                        return Err(format!("cannot order {lt:?} and {rt:?}"));
                    }
                    Some(Bool)
                }
                BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => {
                    if !(numeric(lt) && numeric(rt)) {
                        return Err(format!("arithmetic needs numbers, got {lt:?} and {rt:?}"));
                    }
                    if *op == BinOp::Div || lt == Some(Float) || rt == Some(Float) {
                        Some(Float)
                    } else {
                        Some(Int)
                    }
                }
            }
        }
        Node::Call(func, args) => {
            let types = args
                .iter()
                .map(|a| check(a, inputs))
                .collect::<Result<Vec<_>, _>>()?;
            let arity = |n: usize| {
                if args.len() == n {
                    Ok(())
                } else {
                    Err(format!("{func:?} takes {n} argument(s), got {}", args.len()))
                }
            };
            let numeric_arg = |t: &Option<DType>| t.is_none_or(|t| t.is_numeric());
            match func {
                Func::Abs => {
                    arity(1)?;
                    if !numeric_arg(&types[0]) {
                        return Err("abs needs a number".into());
                    }
                    types[0]
                }
                Func::Log | Func::Exp | Func::Sqrt => {
                    arity(1)?;
                    if !numeric_arg(&types[0]) {
                        return Err(format!("{func:?} needs a number"));
                    }
                    Some(Float)
                }
                Func::Min | Func::Max => {
                    arity(2)?;
                    if !types.iter().all(numeric_arg) {
                        return Err(format!("{func:?} needs numbers"));
                    }
                    if types.contains(&Some(Float)) {
                        Some(Float)
                    } else {
                        Some(Int)
                    }
                }
                Func::Coalesce => {
                    if args.is_empty() {
                        return Err("coalesce needs at least one argument".into());
                    }
                    unify(&types)?
                }
                Func::If => {
                    arity(3)?;
                    if types[0].is_some_and(|t| t != Bool) {
                        return Err("if needs a bool condition".into());
                    }
                    unify(&types[1..])?
                }
            }
        }
    })
}

fn unify(types: &[Option<DType>]) -> Result<Option<DType>, String> {
    let mut out: Option<DType> = None;
    for t in types.iter().flatten() {
        out = match out {
            None => Some(*t),
            Some(o) if o == *t => Some(o),
            Some(o) if o.is_numeric() && t.is_numeric() => Some(DType::Float),
            Some(o) => return Err(format!("branches have different types: {o} and {t}")),
        };
    }
    Ok(out)
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn finite(x: f64) -> Result<Value, EvalError> {
    if x.is_finite() {
        Ok(Value::Float(x))
    } else {
        Err(EvalError(format!("non-finite result {x}")))
    }
}

/// `&&` (`and` = true) and `||` with SQL's three-valued logic, short-circuiting: the right
/// side is evaluated only when the left does not decide the answer, so a guard such as
/// `x != 0 && y / x > 1` never divides by zero. `false && null` is false, `true || null` is
/// true, and otherwise a null side makes the answer null.
fn logic(and: bool, l: &Node, r: &Node, inputs: &[&Value]) -> Result<Value, EvalError> {
    // The value that decides the answer on its own: false for `&&`, true for `||`.
    let decisive = Value::Bool(!and);
    let a = eval(l, inputs)?;
    if a == decisive {
        return Ok(decisive);
    }
    let b = eval(r, inputs)?;
    if b == decisive {
        return Ok(decisive);
    }
    if a.is_null() || b.is_null() {
        return Ok(Value::Null);
    }
    Ok(Value::Bool(and))
}

fn eval(node: &Node, inputs: &[&Value]) -> Result<Value, EvalError> {
    Ok(match node {
        Node::Const(v) => v.clone(),
        Node::Input(i) => inputs[*i].clone(),
        Node::Neg(e) => match eval(e, inputs)? {
            Value::Int(i) => Value::Int(i.wrapping_neg()),
            Value::Float(f) => Value::Float(-f),
            _ => Value::Null,
        },
        Node::Not(e) => match eval(e, inputs)? {
            Value::Bool(b) => Value::Bool(!b),
            _ => Value::Null,
        },
        Node::Bin(op @ (BinOp::And | BinOp::Or), l, r) => logic(*op == BinOp::And, l, r, inputs)?,
        Node::Bin(op, l, r) => {
            let (a, b) = (eval(l, inputs)?, eval(r, inputs)?);
            if a.is_null() || b.is_null() {
                return Ok(Value::Null);
            }
            match op {
                // Taken by the arm above; correct (if slower) should it ever get here.
                BinOp::Or | BinOp::And => return logic(*op == BinOp::And, l, r, inputs),
                BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                    let ord = match (&a, &b) {
                        (Value::Str(x), Value::Str(y)) => x.partial_cmp(y),
                        (Value::Bool(x), Value::Bool(y)) => x.partial_cmp(y),
                        (Value::Int(x), Value::Int(y)) => x.partial_cmp(y),
                        _ => num(&a).partial_cmp(&num(&b)),
                    };
                    let Some(ord) = ord else { return Ok(Value::Null) };
                    use std::cmp::Ordering::*;
                    Value::Bool(match op {
                        BinOp::Eq => ord == Equal,
                        BinOp::Ne => ord != Equal,
                        BinOp::Lt => ord == Less,
                        BinOp::Le => ord != Greater,
                        BinOp::Gt => ord == Greater,
                        _ => ord != Less,
                    })
                }
                BinOp::Div => {
                    let d = num(&b);
                    if d == 0.0 {
                        return Err(EvalError("division by zero".into()));
                    }
                    finite(num(&a) / d)?
                }
                _ => match (&a, &b) {
                    (Value::Int(x), Value::Int(y)) => match op {
                        BinOp::Add => Value::Int(x.wrapping_add(*y)),
                        BinOp::Sub => Value::Int(x.wrapping_sub(*y)),
                        BinOp::Mul => Value::Int(x.wrapping_mul(*y)),
                        _ => match x.checked_rem(*y) {
                            Some(r) => Value::Int(r),
                            None => return Err(EvalError("remainder by zero".into())),
                        },
                    },
                    _ => {
                        let (x, y) = (num(&a), num(&b));
                        finite(match op {
                            BinOp::Add => x + y,
                            BinOp::Sub => x - y,
                            BinOp::Mul => x * y,
                            _ => x % y,
                        })?
                    }
                },
            }
        }
        Node::Call(func, args) => match func {
            Func::Coalesce => {
                for a in args {
                    let v = eval(a, inputs)?;
                    if !v.is_null() {
                        return Ok(v);
                    }
                }
                Value::Null
            }
            Func::If => match eval(&args[0], inputs)? {
                Value::Bool(true) => eval(&args[1], inputs)?,
                Value::Bool(false) => eval(&args[2], inputs)?,
                _ => Value::Null,
            },
            _ => {
                let vals = args
                    .iter()
                    .map(|a| eval(a, inputs))
                    .collect::<Result<Vec<_>, _>>()?;
                if vals.iter().any(Value::is_null) {
                    return Ok(Value::Null);
                }
                match func {
                    Func::Abs => match &vals[0] {
                        Value::Int(i) => Value::Int(i.wrapping_abs()),
                        v => Value::Float(num(v).abs()),
                    },
                    Func::Min | Func::Max => {
                        let pick_first = if *func == Func::Min {
                            num(&vals[0]) <= num(&vals[1])
                        } else {
                            num(&vals[0]) >= num(&vals[1])
                        };
                        let v = if pick_first { &vals[0] } else { &vals[1] };
                        match (&vals[0], &vals[1]) {
                            (Value::Int(_), Value::Int(_)) => v.clone(),
                            _ => Value::Float(num(v)),
                        }
                    }
                    Func::Log => finite(num(&vals[0]).ln())?,
                    Func::Exp => finite(num(&vals[0]).exp())?,
                    _ => finite(num(&vals[0]).sqrt())?,
                }
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(input: &Input) -> Result<DType, String> {
        match input {
            Input::Request(n) if n == "amount" => Ok(DType::Float),
            Input::Request(n) if n == "qty" => Ok(DType::Int),
            Input::Request(n) if n == "country" => Ok(DType::String),
            Input::Feature { view, feature } if view == "user_stats" && feature == "avg" => Ok(DType::Float),
            other => Err(format!("unknown input {other}")),
        }
    }

    fn run(text: &str, values: &[Value]) -> Result<Value, EvalError> {
        let e = Expr::parse(text, &types).unwrap();
        let refs: Vec<&Value> = e
            .inputs()
            .iter()
            .map(|i| match i.to_string().as_str() {
                "amount" => &values[0],
                "user_stats.avg" => &values[1],
                "qty" => &values[2],
                _ => &values[3],
            })
            .collect();
        e.eval(&refs)
    }

    #[test]
    fn evaluates_ratios_with_precedence_and_nulls() {
        let v = [
            Value::Float(30.0),
            Value::Float(10.0),
            Value::Int(3),
            Value::Str("DE".into()),
        ];
        assert_eq!(run("amount / user_stats.avg", &v), Ok(Value::Float(3.0)));
        assert_eq!(run("1 + qty * 2 - 4 % 3", &v), Ok(Value::Int(6)));
        assert_eq!(
            run("-(amount - 40) >= 10 && country == 'DE'", &v),
            Ok(Value::Bool(true))
        );
        assert_eq!(run("if(qty > 2, amount, 0.5)", &v), Ok(Value::Float(30.0)));
        assert_eq!(run("max(qty, 7)", &v), Ok(Value::Int(7)));
        let nulls = [Value::Float(30.0), Value::Null, Value::Int(3), Value::Null];
        assert_eq!(run("amount / user_stats.avg", &nulls), Ok(Value::Null));
        assert_eq!(
            run("coalesce(user_stats.avg, amount)", &nulls),
            Ok(Value::Float(30.0))
        );
    }

    #[test]
    fn and_or_follow_sql_three_valued_logic() {
        let (t, f, n) = ("true", "false", "null");
        let b = |x: bool| Ok(Value::Bool(x));
        let cases = [
            (t, "&&", t, b(true)),
            (t, "&&", f, b(false)),
            (t, "&&", n, Ok(Value::Null)),
            (f, "&&", t, b(false)),
            (f, "&&", f, b(false)),
            (f, "&&", n, b(false)),
            (n, "&&", t, Ok(Value::Null)),
            (n, "&&", f, b(false)),
            (n, "&&", n, Ok(Value::Null)),
            (t, "||", t, b(true)),
            (t, "||", f, b(true)),
            (t, "||", n, b(true)),
            (f, "||", t, b(true)),
            (f, "||", f, b(false)),
            (f, "||", n, Ok(Value::Null)),
            (n, "||", t, b(true)),
            (n, "||", f, Ok(Value::Null)),
            (n, "||", n, Ok(Value::Null)),
        ];
        let v = [Value::Null, Value::Null, Value::Null, Value::Null];
        for (l, op, r, want) in cases {
            let text = format!("{l} {op} {r}");
            assert_eq!(run(&text, &v), want, "{text}");
        }
        // Nulls that come from inputs, not literals.
        assert_eq!(
            run(
                "user_stats.avg > 1 || qty > 2",
                &[Value::Null, Value::Null, Value::Int(3), Value::Null]
            ),
            b(true)
        );
        assert_eq!(
            run(
                "user_stats.avg > 1 && qty > 2",
                &[Value::Null, Value::Null, Value::Int(1), Value::Null]
            ),
            b(false)
        );
    }

    #[test]
    fn and_or_do_not_evaluate_a_side_that_cannot_change_the_answer() {
        let zero = [Value::Float(5.0), Value::Float(0.0), Value::Int(0), Value::Null];
        assert_eq!(
            run("user_stats.avg != 0 && amount / user_stats.avg > 1", &zero),
            Ok(Value::Bool(false))
        );
        assert_eq!(
            run("user_stats.avg == 0 || amount / user_stats.avg > 1", &zero),
            Ok(Value::Bool(true))
        );
        assert_eq!(run("qty != 0 and 10 % qty == 0", &zero), Ok(Value::Bool(false)));
        // A side that is evaluated still reports its error.
        assert!(run("user_stats.avg == 0 && amount / user_stats.avg > 1", &zero).is_err());
        let two = [Value::Float(5.0), Value::Float(2.0), Value::Int(0), Value::Null];
        assert_eq!(
            run("user_stats.avg != 0 && amount / user_stats.avg > 1", &two),
            Ok(Value::Bool(true))
        );
    }

    #[test]
    fn division_by_zero_is_an_error_not_infinity() {
        let v = [Value::Float(1.0), Value::Float(0.0), Value::Int(0), Value::Null];
        assert!(run("amount / user_stats.avg", &v).is_err());
        assert!(run("qty % 0", &v).is_err());
        assert!(run("log(user_stats.avg)", &v).is_err());
    }

    #[test]
    fn type_and_syntax_errors_are_reported() {
        let err = |t: &str| Expr::parse(t, &types).unwrap_err();
        assert!(
            err("amount + country").contains("arithmetic needs numbers"),
            "{}",
            err("amount + country")
        );
        assert!(err("amount +").contains("ends too early"));
        assert!(err("nope * 2").contains("unknown input nope"));
        assert!(err("user_stats.missing").contains("unknown input user_stats.missing"));
        assert!(err("amount = 2").contains("use '=='"));
        assert!(err("frob(amount)").contains("unknown function"));
        assert!(err("if(amount, 1, 2)").contains("bool condition"));
        assert_eq!(Expr::parse("amount / 2", &types).unwrap().dtype(), DType::Float);
        assert_eq!(Expr::parse("qty * 2", &types).unwrap().dtype(), DType::Int);
    }
}
