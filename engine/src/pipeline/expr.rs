//! The `if.metrics` expression language: parsing, evaluation and rendering as an Argo `when`.
//!
//! An expression is comparisons `NAME OP NUMBER` (`OP` one of `>=`, `>`, `<=`, `<`, `==`, `!=`)
//! joined by `&&` and `||` (`&&` binds tighter) with parentheses. `NAME` is
//! `[A-Za-z_][A-Za-z0-9_]*`, optionally prefixed by a step name and a dot (`evaluate.accuracy`).
//! Expressions are at most [`MAX_LENGTH`] characters and [`MAX_DEPTH`] parentheses deep.

use std::fmt;
use std::str::FromStr;

/// The longest expression accepted, in characters.
pub const MAX_LENGTH: usize = 1000;

/// The deepest nesting of parentheses accepted.
pub const MAX_DEPTH: usize = 32;

/// A parsed `if.metrics` expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `NAME OP NUMBER`.
    Compare(Comparison),
    /// Both sides hold.
    And(Box<Expr>, Box<Expr>),
    /// Either side holds.
    Or(Box<Expr>, Box<Expr>),
}

/// One comparison of a metric with a number.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The metric compared.
    pub metric: MetricRef,
    /// The comparison operator.
    pub op: CmpOp,
    /// The number on the right; always finite when parsed.
    pub value: f64,
}

/// A reference to a metric: `NAME`, or `STEP.NAME` for the metrics of a given step.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetricRef {
    /// The step publishing the metric, when written as `STEP.NAME`.
    pub step: Option<String>,
    /// The key in the metrics object.
    pub name: String,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `>=`
    Ge,
    /// `>`
    Gt,
    /// `<=`
    Le,
    /// `<`
    Lt,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

/// A problem in an expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// The character offset (not byte offset) in the expression where the problem is.
    pub offset: usize,
    /// What is wrong, for people.
    pub message: String,
}

/// The result of evaluating an expression against known metric values.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Whether the expression holds.
    pub value: bool,
    /// The metrics that had no value, each once, in order of appearance.
    pub missing: Vec<MetricRef>,
}

/// Parses an `if.metrics` expression.
///
/// # Errors
///
/// An [`ExprError`] with the character offset and a message for the first problem found.
pub fn parse(text: &str) -> Result<Expr, ExprError> {
    if text.chars().count() > MAX_LENGTH {
        let message = format!("expression is longer than {MAX_LENGTH} characters");
        return Err(ExprError::new(MAX_LENGTH, message));
    }
    let mut parser = Parser {
        chars: text.chars().collect(),
        at: 0,
        depth: 0,
    };
    if parser.peek().is_none() {
        return Err(ExprError::new(0, "empty expression".to_owned()));
    }
    let expr = parser.or()?;
    match parser.peek() {
        None => Ok(expr),
        Some(_) => Err(parser.unexpected(None)),
    }
}

impl Expr {
    /// Every metric reference, in order of appearance (a metric used twice appears twice).
    pub fn metrics(&self) -> Vec<&MetricRef> {
        let mut found = Vec::new();
        self.collect_metrics(&mut found);
        found
    }

    fn collect_metrics<'a>(&'a self, found: &mut Vec<&'a MetricRef>) {
        match self {
            Expr::Compare(comparison) => found.push(&comparison.metric),
            Expr::And(left, right) | Expr::Or(left, right) => {
                left.collect_metrics(found);
                right.collect_metrics(found);
            }
        }
    }

    /// Evaluates against metric values; a missing key makes its comparison false and is reported.
    ///
    /// Every comparison is looked at (no short-circuit), so `missing` lists each absent metric.
    pub fn eval(&self, lookup: &dyn Fn(&MetricRef) -> Option<f64>) -> Evaluation {
        let mut missing = Vec::new();
        let value = self.eval_into(lookup, &mut missing);
        Evaluation { value, missing }
    }

    fn eval_into(
        &self,
        lookup: &dyn Fn(&MetricRef) -> Option<f64>,
        missing: &mut Vec<MetricRef>,
    ) -> bool {
        match self {
            Expr::Compare(comparison) => comparison.eval_into(lookup, missing),
            Expr::And(left, right) => {
                let left = left.eval_into(lookup, missing);
                right.eval_into(lookup, missing) && left
            }
            Expr::Or(left, right) => {
                let left = left.eval_into(lookup, missing);
                right.eval_into(lookup, missing) || left
            }
        }
    }

    /// Renders an Argo `when` expression in expr-lang syntax, WITHOUT the surrounding `{{=` `}}`.
    ///
    /// `source(metric)` returns the expr-lang expression that yields the JSON string of the metrics
    /// object holding that metric, e.g. `tasks['evaluate'].outputs.parameters['metrics']`. Each
    /// comparison checks that the key exists first, so a missing key gives false, not an error.
    pub fn to_argo(&self, source: &dyn Fn(&MetricRef) -> String) -> String {
        match self {
            Expr::Compare(comparison) => comparison.to_argo(source),
            Expr::And(left, right) => {
                format!(
                    "{} && {}",
                    left.to_argo_in_and(source),
                    right.to_argo_in_and(source)
                )
            }
            Expr::Or(left, right) => {
                format!("{} || {}", left.to_argo(source), right.to_argo(source))
            }
        }
    }

    fn to_argo_in_and(&self, source: &dyn Fn(&MetricRef) -> String) -> String {
        match self {
            Expr::Or(..) => format!("({})", self.to_argo(source)),
            Expr::Compare(_) | Expr::And(..) => self.to_argo(source),
        }
    }

    fn fmt_in_and(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Or(..) => write!(f, "({self})"),
            Expr::Compare(_) | Expr::And(..) => write!(f, "{self}"),
        }
    }
}

impl fmt::Display for Expr {
    /// Writes the expression in the `if.metrics` syntax, with only the parentheses it needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Compare(comparison) => write!(f, "{comparison}"),
            Expr::And(left, right) => {
                left.fmt_in_and(f)?;
                f.write_str(" && ")?;
                right.fmt_in_and(f)
            }
            Expr::Or(left, right) => write!(f, "{left} || {right}"),
        }
    }
}

impl FromStr for Expr {
    type Err = ExprError;

    fn from_str(text: &str) -> Result<Expr, ExprError> {
        parse(text)
    }
}

impl Comparison {
    fn eval_into(
        &self,
        lookup: &dyn Fn(&MetricRef) -> Option<f64>,
        missing: &mut Vec<MetricRef>,
    ) -> bool {
        if let Some(actual) = lookup(&self.metric) {
            return self.op.holds(actual, self.value);
        }
        if !missing.contains(&self.metric) {
            missing.push(self.metric.clone());
        }
        false
    }

    fn to_argo(&self, source: &dyn Fn(&MetricRef) -> String) -> String {
        let json = format!("sprig.fromJson({})", source(&self.metric));
        let (name, op, value) = (&self.metric.name, self.op, argo_number(self.value));
        format!("('{name}' in {json} && {json}['{name}'] {op} {value})")
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.metric, self.op, argo_number(self.value))
    }
}

impl fmt::Display for MetricRef {
    /// `accuracy` or `evaluate.accuracy`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.step {
            Some(step) => write!(f, "{step}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl CmpOp {
    /// True when `metric OP value` holds (comparisons with NaN are false, except `!=`).
    pub fn holds(self, metric: f64, value: f64) -> bool {
        match self {
            CmpOp::Ge => metric >= value,
            CmpOp::Gt => metric > value,
            CmpOp::Le => metric <= value,
            CmpOp::Lt => metric < value,
            CmpOp::Eq => metric == value,
            CmpOp::Ne => metric != value,
        }
    }

    /// The operator as written: `>=`, `>`, `<=`, `<`, `==` or `!=`.
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Ge => ">=",
            CmpOp::Gt => ">",
            CmpOp::Le => "<=",
            CmpOp::Lt => "<",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        }
    }
}

impl fmt::Display for CmpOp {
    /// `>=`, `>`, `<=`, `<`, `==` or `!=`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ExprError {
    fn new(offset: usize, message: String) -> ExprError {
        ExprError { offset, message }
    }
}

impl fmt::Display for ExprError {
    /// The message followed by `(at offset N)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at offset {})", self.message, self.offset)
    }
}

impl std::error::Error for ExprError {}

/// Prints a number so that expr-lang reads it back: `0.92`, `-1`, `0.001`, `1e20`.
fn argo_number(value: f64) -> String {
    let magnitude = value.abs();
    if value == 0.0 {
        "0".to_owned()
    } else if value.is_nan() {
        "(0.0 / 0.0)".to_owned()
    } else if value.is_infinite() {
        format!("({} / 0.0)", value.signum())
    } else if (1e-6..1e15).contains(&magnitude) {
        format!("{value}")
    } else {
        format!("{value:e}")
    }
}

/// A recursive-descent parser over the characters of an expression.
struct Parser {
    chars: Vec<char>,
    at: usize,
    depth: usize,
}

impl Parser {
    /// Skips whitespace and returns the next character.
    fn peek(&mut self) -> Option<char> {
        while self.chars.get(self.at).is_some_and(|c| c.is_whitespace()) {
            self.at += 1;
        }
        self.chars.get(self.at).copied()
    }

    /// Consumes `token` if it comes next.
    fn eat(&mut self, token: &str) -> bool {
        self.peek();
        let found = token
            .chars()
            .enumerate()
            .all(|(i, c)| self.chars.get(self.at + i) == Some(&c));
        if found {
            self.at += token.chars().count();
        }
        found
    }

    fn error(&self, offset: usize, message: String) -> ExprError {
        ExprError::new(offset.min(self.chars.len()), message)
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.and()?;
        while self.eat("||") {
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.operand()?;
        while self.eat("&&") {
            let right = self.operand()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    /// A comparison or a parenthesised expression.
    fn operand(&mut self) -> Result<Expr, ExprError> {
        match self.peek() {
            Some('(') => self.group(),
            Some(_) => self.comparison().map(Expr::Compare),
            None => {
                let message = "expected a metric name at the end of the expression".to_owned();
                Err(self.error(self.at, message))
            }
        }
    }

    fn group(&mut self) -> Result<Expr, ExprError> {
        let open = self.at;
        if self.depth == MAX_DEPTH {
            let message = format!("parentheses nested deeper than {MAX_DEPTH} levels");
            return Err(self.error(open, message));
        }
        self.at += 1;
        self.depth += 1;
        let expr = self.or()?;
        if self.peek() != Some(')') {
            return Err(self.unexpected(Some(open)));
        }
        self.at += 1;
        self.depth -= 1;
        Ok(expr)
    }

    /// The error for what follows a complete operand when it is not `&&`, `||` or the expected
    /// end (`open` is the offset of the unclosed `(` when inside parentheses).
    fn unexpected(&mut self, open: Option<usize>) -> ExprError {
        let found = self.peek();
        let message = match found {
            None | Some(')') => "unbalanced parenthesis".to_owned(),
            Some(c @ ('&' | '|')) => format!("unexpected \"{c}\" (use && or ||)"),
            Some(c) => format!("unexpected \"{c}\" (join comparisons with && or ||)"),
        };
        let offset = match (found, open) {
            (None, Some(open)) => open,
            _ => self.at,
        };
        self.error(offset, message)
    }

    fn comparison(&mut self) -> Result<Comparison, ExprError> {
        let start = self.at;
        let written = self.run(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if let (true, Some(found)) = (written.is_empty(), self.chars.get(start)) {
            let message = format!("expected a metric name, found \"{found}\"");
            return Err(self.error(start, message));
        }
        let metric = metric_ref(&written, start)?;
        let op = self.operator(&written)?;
        let value = self.number(op)?;
        Ok(Comparison { metric, op, value })
    }

    /// Consumes the characters satisfying `accept` from the current position.
    fn run(&mut self, accept: impl Fn(char) -> bool) -> String {
        let start = self.at;
        while self.chars.get(self.at).is_some_and(|&c| accept(c)) {
            self.at += 1;
        }
        self.chars[start..self.at].iter().collect()
    }

    fn operator(&mut self, metric: &str) -> Result<CmpOp, ExprError> {
        let operators = [
            (">=", CmpOp::Ge),
            ("<=", CmpOp::Le),
            ("==", CmpOp::Eq),
            ("!=", CmpOp::Ne),
            (">", CmpOp::Gt),
            ("<", CmpOp::Lt),
        ];
        if let Some(&(_, op)) = operators.iter().find(|(token, _)| self.eat(token)) {
            return Ok(op);
        }
        let lone_equals = self.chars.get(self.at) == Some(&'=')
            && !matches!(self.chars.get(self.at + 1), Some('<' | '>'));
        let message = if lone_equals {
            "unexpected \"=\" (use == to compare)".to_owned()
        } else {
            format!("expected a comparison operator (>=, >, <=, <, ==, !=) after \"{metric}\"")
        };
        Err(self.error(self.at, message))
    }

    fn number(&mut self, op: CmpOp) -> Result<f64, ExprError> {
        self.peek();
        let start = self.at;
        let written = self.run(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-'));
        let numeric_start = written.starts_with(|c: char| c.is_ascii_digit() || "+-.".contains(c));
        if !numeric_start {
            return Err(self.error(start, format!("expected a number after \"{op}\"")));
        }
        if !is_number(&written) {
            let message =
                format!("\"{written}\" is not a number (write numbers like 0.92, -1 or 1e-3)");
            return Err(self.error(start, message));
        }
        match written.parse::<f64>() {
            Ok(value) if value.is_finite() => Ok(value),
            Ok(_) | Err(_) => Err(self.error(start, format!("\"{written}\" is out of range"))),
        }
    }
}

/// Checks and splits a metric reference written at `start`.
fn metric_ref(written: &str, start: usize) -> Result<MetricRef, ExprError> {
    let error = |offset: usize, message: String| Err(ExprError::new(offset, message));
    let Some((step, name)) = written.split_once('.') else {
        if !is_metric_name(written) {
            return error(start, not_a_metric_name(written));
        }
        return Ok(MetricRef {
            step: None,
            name: written.to_owned(),
        });
    };
    let name_start = start + step.chars().count() + 1;
    if name.contains('.') {
        let message = format!("\"{written}\" is not a metric reference (use NAME or STEP.NAME)");
        error(start, message)
    } else if !is_step_name(step) {
        let message = format!("\"{step}\" is not a step name (lowercase letters, digits and -)");
        error(start, message)
    } else if !is_metric_name(name) {
        error(name_start, not_a_metric_name(name))
    } else {
        Ok(MetricRef {
            step: Some(step.to_owned()),
            name: name.to_owned(),
        })
    }
}

/// The message for a bad metric name.
fn not_a_metric_name(written: &str) -> String {
    format!("\"{written}\" is not a metric name (letters, digits and _, not starting with a digit)")
}

/// `[A-Za-z_][A-Za-z0-9_]*`
fn is_metric_name(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn is_step_name(text: &str) -> bool {
    let edge = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    text.starts_with(edge) && text.ends_with(edge) && text.chars().all(|c| edge(c) || c == '-')
}

/// `-?DIGITS(.DIGITS)?([eE][+-]?DIGITS)?`
fn is_number(text: &str) -> bool {
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (unsigned, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let exponent_digits = exponent.map(|e| e.strip_prefix(['+', '-']).unwrap_or(e));
    digits(whole) && fraction.is_none_or(digits) && exponent_digits.is_none_or(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(text: &str) -> Expr {
        parse(text).expect("valid expression")
    }

    fn error(text: &str) -> (usize, String) {
        let error = parse(text).expect_err("invalid expression");
        (error.offset, error.message)
    }

    fn cmp(step: Option<&str>, name: &str, op: CmpOp, value: f64) -> Expr {
        let metric = MetricRef {
            step: step.map(str::to_owned),
            name: name.to_owned(),
        };
        Expr::Compare(Comparison { metric, op, value })
    }

    fn and(left: Expr, right: Expr) -> Expr {
        Expr::And(Box::new(left), Box::new(right))
    }

    fn or(left: Expr, right: Expr) -> Expr {
        Expr::Or(Box::new(left), Box::new(right))
    }

    #[test]
    fn single_comparisons() {
        assert_eq!(
            expr("accuracy >= 0.92"),
            cmp(None, "accuracy", CmpOp::Ge, 0.92)
        );
        assert_eq!(expr("loss<0.3"), cmp(None, "loss", CmpOp::Lt, 0.3));
        assert_eq!(expr(" a > -1 "), cmp(None, "a", CmpOp::Gt, -1.0));
        assert_eq!(expr("a<=3"), cmp(None, "a", CmpOp::Le, 3.0));
        assert_eq!(expr("a == 1e-3"), cmp(None, "a", CmpOp::Eq, 0.001));
        assert_eq!(expr("_A1 != 2.5E+2"), cmp(None, "_A1", CmpOp::Ne, 250.0));
        assert_eq!(expr("a>-1"), cmp(None, "a", CmpOp::Gt, -1.0));
    }

    #[test]
    fn step_references() {
        let parsed = expr("evaluate.accuracy >= 0.9");
        assert_eq!(parsed, cmp(Some("evaluate"), "accuracy", CmpOp::Ge, 0.9));
        let parsed = expr("eval-2.top_1 > 0");
        assert_eq!(parsed, cmp(Some("eval-2"), "top_1", CmpOp::Gt, 0.0));
        assert_eq!(expr("0.x < 1"), cmp(Some("0"), "x", CmpOp::Lt, 1.0));
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let a = || cmp(None, "a", CmpOp::Gt, 1.0);
        let b = || cmp(None, "b", CmpOp::Gt, 2.0);
        let c = || cmp(None, "c", CmpOp::Gt, 3.0);
        assert_eq!(expr("a > 1 || b > 2 && c > 3"), or(a(), and(b(), c())));
        assert_eq!(expr("a > 1 && b > 2 || c > 3"), or(and(a(), b()), c()));
        assert_eq!(expr("(a > 1 || b > 2) && c > 3"), and(or(a(), b()), c()));
        assert_eq!(expr("a > 1 && b > 2 && c > 3"), and(and(a(), b()), c()));
        assert_eq!(expr("((a > 1))"), a());
        assert_eq!(expr("a>1&&(b>2||c>3)"), and(a(), or(b(), c())));
    }

    #[test]
    fn display_round_trips() {
        let text = "(a > 1 || e.b >= 0.5) && c != -2 || d == 0.001";
        assert_eq!(expr(text).to_string(), text);
        assert_eq!(expr("(a>1)&&((b<2))").to_string(), "a > 1 && b < 2");
        let metric = MetricRef {
            step: Some("evaluate".to_owned()),
            name: "acc".to_owned(),
        };
        assert_eq!(metric.to_string(), "evaluate.acc");
        assert_eq!(CmpOp::Ne.to_string(), "!=");
    }

    #[test]
    fn metrics_in_order() {
        let parsed = expr("b > 1 && (t.a < 2 || b == 3)");
        let names: Vec<String> = parsed.metrics().iter().map(ToString::to_string).collect();
        assert_eq!(names, ["b", "t.a", "b"]);
    }

    #[test]
    fn empty_and_length_errors() {
        assert_eq!(error(""), (0, "empty expression".to_owned()));
        assert_eq!(error("   "), (0, "empty expression".to_owned()));
        let long = format!("a > {}", "1".repeat(MAX_LENGTH));
        let message = "expression is longer than 1000 characters".to_owned();
        assert_eq!(error(&long), (1000, message));
        let exactly = format!("{}a > 1", " ".repeat(MAX_LENGTH - 5));
        assert!(parse(&exactly).is_ok());
    }

    #[test]
    fn operator_errors() {
        let message = "expected a comparison operator (>=, >, <=, <, ==, !=) after \"accuracy\"";
        assert_eq!(error("accuracy 0.9"), (9, message.to_owned()));
        assert_eq!(error("accuracy"), (8, message.to_owned()));
        let message = "expected a comparison operator (>=, >, <=, <, ==, !=) after \"e.acc\"";
        assert_eq!(error("e.acc => 1"), (6, message.to_owned()));
        assert_eq!(
            error("a = 1"),
            (2, "unexpected \"=\" (use == to compare)".to_owned())
        );
        let message = "expected a comparison operator (>=, >, <=, <, ==, !=) after \"a\"";
        assert_eq!(error("a ! 1"), (2, message.to_owned()));
    }

    #[test]
    fn number_errors() {
        assert_eq!(
            error("a >= b"),
            (5, "expected a number after \">=\"".to_owned())
        );
        assert_eq!(
            error("a >="),
            (4, "expected a number after \">=\"".to_owned())
        );
        assert_eq!(
            error("a < (1)"),
            (4, "expected a number after \"<\"".to_owned())
        );
        let hint = "is not a number (write numbers like 0.92, -1 or 1e-3)";
        assert_eq!(error("a > 1.2.3"), (4, format!("\"1.2.3\" {hint}")));
        assert_eq!(error("a > .5"), (4, format!("\".5\" {hint}")));
        assert_eq!(error("a > 1x"), (4, format!("\"1x\" {hint}")));
        assert_eq!(error("a > - 1"), (4, format!("\"-\" {hint}")));
        assert_eq!(error("a > 1e"), (4, format!("\"1e\" {hint}")));
        assert_eq!(
            error("a > 1e999"),
            (4, "\"1e999\" is out of range".to_owned())
        );
    }

    #[test]
    fn name_errors() {
        let message =
            "\"2acc\" is not a metric name (letters, digits and _, not starting with a digit)";
        assert_eq!(error("2acc > 1"), (0, message.to_owned()));
        let message =
            "\"a-b\" is not a metric name (letters, digits and _, not starting with a digit)";
        assert_eq!(error("x > 1 || a-b > 1"), (9, message.to_owned()));
        let message = "\"Eval\" is not a step name (lowercase letters, digits and -)";
        assert_eq!(error("Eval.acc > 1"), (0, message.to_owned()));
        let message =
            "\"1x\" is not a metric name (letters, digits and _, not starting with a digit)";
        assert_eq!(error("eval.1x > 1"), (5, message.to_owned()));
        let message = "\"a.b.c\" is not a metric reference (use NAME or STEP.NAME)";
        assert_eq!(error("a.b.c > 1"), (0, message.to_owned()));
        assert_eq!(
            error("> 1"),
            (0, "expected a metric name, found \">\"".to_owned())
        );
        assert_eq!(
            error("a > 1 && é > 1"),
            (9, "expected a metric name, found \"é\"".to_owned())
        );
        let message = "expected a metric name at the end of the expression".to_owned();
        assert_eq!(error("a > 1 &&"), (8, message));
        assert_eq!(
            error("()"),
            (1, "expected a metric name, found \")\"".to_owned())
        );
    }

    #[test]
    fn joining_errors() {
        assert_eq!(
            error("a > 1 & b > 2"),
            (6, "unexpected \"&\" (use && or ||)".to_owned())
        );
        assert_eq!(
            error("a > 1 | b > 2"),
            (6, "unexpected \"|\" (use && or ||)".to_owned())
        );
        let message = "unexpected \"b\" (join comparisons with && or ||)".to_owned();
        assert_eq!(error("a > 1 b > 2"), (6, message));
        let message = "unexpected \"x\" (join comparisons with && or ||)".to_owned();
        assert_eq!(error("(a > 1 x"), (7, message));
    }

    #[test]
    fn parenthesis_errors() {
        assert_eq!(error("(a > 1"), (0, "unbalanced parenthesis".to_owned()));
        assert_eq!(
            error("a > 1 && ((b > 2)"),
            (9, "unbalanced parenthesis".to_owned())
        );
        assert_eq!(error("a > 1)"), (5, "unbalanced parenthesis".to_owned()));
        assert_eq!(error("(a > 1))"), (7, "unbalanced parenthesis".to_owned()));
    }

    #[test]
    fn depth_limit() {
        let fine = format!("{}a > 1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert_eq!(expr(&fine), cmp(None, "a", CmpOp::Gt, 1.0));
        let deep = format!(
            "{}a > 1{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        let message = "parentheses nested deeper than 32 levels".to_owned();
        assert_eq!(error(&deep), (32, message));
        let unclosed = "(".repeat(MAX_LENGTH);
        assert_eq!(
            error(&unclosed).1,
            "parentheses nested deeper than 32 levels"
        );
    }

    #[test]
    fn long_chains() {
        let text = vec!["a>1"; 200].join("||");
        let parsed = expr(&text);
        assert_eq!(parsed.metrics().len(), 200);
        let evaluation = parsed.eval(&|_| Some(2.0));
        assert_eq!(
            evaluation,
            Evaluation {
                value: true,
                missing: vec![]
            }
        );
        assert_eq!(
            parsed.to_argo(&|_| "S".to_owned()).matches(" || ").count(),
            199
        );
    }

    #[test]
    fn eval_with_values() {
        let parsed = expr("accuracy >= 0.92 && loss < 0.3");
        let lookup = |metric: &MetricRef| match metric.name.as_str() {
            "accuracy" => Some(0.95),
            "loss" => Some(0.2),
            _ => None,
        };
        let expected = Evaluation {
            value: true,
            missing: vec![],
        };
        assert_eq!(parsed.eval(&lookup), expected);
        let lookup = |metric: &MetricRef| Some(if metric.name == "loss" { 0.5 } else { 0.95 });
        let expected = Evaluation {
            value: false,
            missing: vec![],
        };
        assert_eq!(parsed.eval(&lookup), expected);
    }

    #[test]
    fn eval_reports_missing_keys() {
        let parsed = expr("a > 1 || e.b > 1 || a < 0 || c == 2");
        let lookup = |metric: &MetricRef| (metric.name == "c").then_some(2.0);
        let a = MetricRef {
            step: None,
            name: "a".to_owned(),
        };
        let b = MetricRef {
            step: Some("e".to_owned()),
            name: "b".to_owned(),
        };
        let expected = Evaluation {
            value: true,
            missing: vec![a.clone(), b],
        };
        assert_eq!(parsed.eval(&lookup), expected);
        let parsed = expr("a > 1 && c == 2");
        let expected = Evaluation {
            value: false,
            missing: vec![a],
        };
        assert_eq!(parsed.eval(&lookup), expected);
    }

    #[test]
    fn eval_operators() {
        assert!(CmpOp::Ge.holds(1.0, 1.0));
        assert!(!CmpOp::Gt.holds(1.0, 1.0));
        assert!(CmpOp::Le.holds(1.0, 1.0));
        assert!(!CmpOp::Lt.holds(1.0, 1.0));
        assert!(CmpOp::Eq.holds(1.0, 1.0));
        assert!(!CmpOp::Ne.holds(1.0, 1.0));
        assert!(!CmpOp::Eq.holds(f64::NAN, 1.0));
        assert!(CmpOp::Ne.holds(f64::NAN, 1.0));
    }

    #[test]
    fn to_argo_guards_every_comparison() {
        let source = |metric: &MetricRef| {
            let step = metric.step.as_deref().unwrap_or("evaluate");
            format!("tasks['{step}'].outputs.parameters['metrics']")
        };
        let parsed = expr("accuracy >= 0.92 && (loss < 0.3 || t.n != -1)");
        let eval = "sprig.fromJson(tasks['evaluate'].outputs.parameters['metrics'])";
        let t = "sprig.fromJson(tasks['t'].outputs.parameters['metrics'])";
        let expected = format!(
            "('accuracy' in {eval} && {eval}['accuracy'] >= 0.92) && \
             (('loss' in {eval} && {eval}['loss'] < 0.3) || ('n' in {t} && {t}['n'] != -1))"
        );
        assert_eq!(parsed.to_argo(&source), expected);
    }

    #[test]
    fn to_argo_small_expression() {
        let parsed = expr("a > 1 || b <= 0.001");
        let expected = "('a' in sprig.fromJson(S) && sprig.fromJson(S)['a'] > 1) || \
                        ('b' in sprig.fromJson(S) && sprig.fromJson(S)['b'] <= 0.001)";
        assert_eq!(parsed.to_argo(&|_| "S".to_owned()), expected);
    }

    #[test]
    fn argo_numbers() {
        assert_eq!(argo_number(0.92), "0.92");
        assert_eq!(argo_number(-1.0), "-1");
        assert_eq!(argo_number(3.0), "3");
        assert_eq!(argo_number(0.001), "0.001");
        assert_eq!(argo_number(-0.0), "0");
        assert_eq!(argo_number(1e-7), "1e-7");
        assert_eq!(argo_number(2.5e20), "2.5e20");
        assert_eq!(argo_number(123_456.5), "123456.5");
        assert_eq!(argo_number(f64::INFINITY), "(1 / 0.0)");
        assert_eq!(argo_number(f64::NEG_INFINITY), "(-1 / 0.0)");
        assert_eq!(argo_number(f64::NAN), "(0.0 / 0.0)");
    }

    #[test]
    fn error_display() {
        let error = parse("a >").expect_err("invalid");
        assert_eq!(
            error.to_string(),
            "expected a number after \">\" (at offset 3)"
        );
    }
}
