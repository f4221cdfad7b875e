//! Kubernetes quantities (`64Gi`, `500m`, `16`, `1.5`, `2e3`) and ferry durations (`90m`, `12h`).
//!
//! Quantities are validated with the grammar Kubernetes uses and kept as the text to emit plus an
//! exact value in milli-units (rounded up, as Kubernetes itself does), so sizes can be converted,
//! for example to MiB for `nvidia.com/gpumem` (HAMi vGPU), without floating point.

use std::fmt;
use std::str::FromStr;

/// The largest value Kubernetes keeps without capping, `2^63 - 1`, in milli-units.
const MAX_MILLIS: u128 = (i64::MAX as u128) * 1000;

/// One MiB in milli-units.
const MEBIBYTE_MILLIS: u128 = 1000 * 1024 * 1024;

/// The hint appended to every malformed-quantity message.
const QUANTITY_EXAMPLES: &str = "(examples: 64Gi, 500Mi, 16, 500m)";

/// A validated Kubernetes quantity such as `64Gi`, `500m`, `16`, `1.5`, `2e3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity {
    /// The text as written, without surrounding whitespace.
    text: String,
    /// The value times 1000, rounded up.
    millis: u128,
}

impl Quantity {
    /// Parses and validates a quantity.
    ///
    /// # Errors
    ///
    /// Text outside the Kubernetes grammar, a negative value, or a value above `2^63 - 1`.
    pub fn parse(text: &str) -> Result<Quantity, String> {
        let text = text.trim();
        let parts = split(text).ok_or_else(|| not_a_quantity(text))?;
        let mantissa = Mantissa::new(parts.whole, parts.fraction)
            .ok_or_else(|| format!("\"{text}\" has too many significant digits"))?;
        if parts.negative && mantissa.digits != 0 {
            return Err(format!("\"{text}\" must not be negative"));
        }
        let millis = mantissa
            .millis(parts.suffix)
            .filter(|millis| *millis <= MAX_MILLIS)
            .ok_or_else(|| format!("\"{text}\" is too large for a Kubernetes quantity"))?;
        Ok(Quantity {
            text: text.to_owned(),
            millis,
        })
    }

    /// The text to emit in manifests: the original text without surrounding whitespace.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value times 1000, rounded up (`500m` is 500, `2` is 2000, `1Ki` is 1 024 000).
    pub fn millis(&self) -> u128 {
        self.millis
    }

    /// The value in MiB, rounded up (`20Gi` is 20 480, `1` is 1).
    pub fn mebibytes_ceil(&self) -> u64 {
        let mebibytes = self.millis.div_ceil(MEBIBYTE_MILLIS);
        u64::try_from(mebibytes).unwrap_or(u64::MAX)
    }

    /// True when the value is exactly zero.
    pub fn is_zero(&self) -> bool {
        self.millis == 0
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Quantity {
    type Err = String;

    fn from_str(text: &str) -> Result<Quantity, String> {
        Quantity::parse(text)
    }
}

/// The message for text that does not follow the quantity grammar.
fn not_a_quantity(text: &str) -> String {
    format!("\"{text}\" is not a Kubernetes quantity {QUANTITY_EXAMPLES}")
}

/// What a quantity's suffix multiplies the number by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suffix {
    /// `2^n`: `Ki` is 10, `Mi` 20 ... `Ei` 60.
    Binary(u32),
    /// `10^n`: `m` is -3, `k` 3, `e5` 5.
    Decimal(i64),
}

/// The pieces of a syntactically valid quantity.
#[derive(Debug, PartialEq, Eq)]
struct Parts<'a> {
    negative: bool,
    whole: &'a str,
    fraction: &'a str,
    suffix: Suffix,
}

/// Splits `[+-]digits[.digits]suffix`; `None` when the text is not in the Kubernetes grammar.
fn split(text: &str) -> Option<Parts<'_>> {
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (whole, rest) = take_digits(rest);
    let (fraction, rest) = match rest.strip_prefix('.') {
        Some(after_dot) => take_digits(after_dot),
        None => ("", rest),
    };
    if fraction.is_empty() && whole.is_empty() {
        return None;
    }
    let suffix = parse_suffix(rest)?;
    Some(Parts {
        negative,
        whole,
        fraction,
        suffix,
    })
}

/// Splits the leading ASCII digits off `text`.
fn take_digits(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text.split_at(end)
}

/// Reads a suffix: binary SI, decimal SI, or a decimal exponent `e`/`E` with a signed integer.
fn parse_suffix(suffix: &str) -> Option<Suffix> {
    let found = match suffix {
        "Ki" => Suffix::Binary(10),
        "Mi" => Suffix::Binary(20),
        "Gi" => Suffix::Binary(30),
        "Ti" => Suffix::Binary(40),
        "Pi" => Suffix::Binary(50),
        "Ei" => Suffix::Binary(60),
        "n" => Suffix::Decimal(-9),
        "u" => Suffix::Decimal(-6),
        "m" => Suffix::Decimal(-3),
        "" => Suffix::Decimal(0),
        "k" => Suffix::Decimal(3),
        "M" => Suffix::Decimal(6),
        "G" => Suffix::Decimal(9),
        "T" => Suffix::Decimal(12),
        "P" => Suffix::Decimal(15),
        "E" => Suffix::Decimal(18),
        other => return parse_exponent(other),
    };
    Some(found)
}

/// Reads `e<int>` / `E<int>`; huge exponents saturate (the value is then zero, tiny or too large).
fn parse_exponent(suffix: &str) -> Option<Suffix> {
    let rest = suffix.strip_prefix(['e', 'E'])?;
    let (negative, digits) = match rest.as_bytes().first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits.bytes().fold(0_i64, |acc, b| {
        acc.saturating_mul(10)
            .saturating_add(i64::from(b - b'0'))
            .min(1_000_000)
    });
    Some(Suffix::Decimal(if negative {
        -magnitude
    } else {
        magnitude
    }))
}

/// A number as `digits * 10^scale`, with leading and trailing zeros removed from `digits`.
#[derive(Debug, PartialEq, Eq)]
struct Mantissa {
    digits: u128,
    scale: i64,
}

impl Mantissa {
    /// Builds the mantissa of `whole.fraction`; `None` when its digits do not fit in a `u128`.
    fn new(whole: &str, fraction: &str) -> Option<Mantissa> {
        let all = format!("{whole}{fraction}");
        let significant = all.trim_start_matches('0');
        let trimmed = significant.trim_end_matches('0');
        let dropped = significant.len() - trimmed.len();
        let digits = trimmed.bytes().try_fold(0_u128, |acc, b| {
            acc.checked_mul(10)?.checked_add(u128::from(b - b'0'))
        })?;
        let scale = len_i64(dropped) - len_i64(fraction.len());
        Some(Mantissa { digits, scale })
    }

    /// The value times `suffix` in milli-units, rounded up; `None` on overflow.
    fn millis(&self, suffix: Suffix) -> Option<u128> {
        if self.digits == 0 {
            return Some(0);
        }
        let (power_of_two, power_of_ten) = match suffix {
            Suffix::Binary(bits) => (bits, 0),
            Suffix::Decimal(exponent) => (0, exponent),
        };
        let numerator = self.digits.checked_mul(1_u128 << power_of_two)?;
        let scale = self.scale.checked_add(power_of_ten)?.checked_add(3)?;
        scale_by_ten(numerator, scale)
    }
}

/// `value * 10^scale`, rounded up; `None` on overflow.
fn scale_by_ten(value: u128, scale: i64) -> Option<u128> {
    let exponent = u32::try_from(scale.unsigned_abs()).ok();
    let power = exponent.and_then(|exponent| 10_u128.checked_pow(exponent));
    match (scale >= 0, power) {
        (true, Some(power)) => value.checked_mul(power),
        (true, None) => None,
        (false, Some(power)) => Some(value.div_ceil(power)),
        (false, None) => Some(1),
    }
}

/// A string length as `i64` (lengths of real text always fit).
fn len_i64(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

/// The message for text that is not a duration.
fn not_a_duration(text: &str) -> String {
    format!("\"{text}\" is not a duration (an integer with s, m, h or d, like 90m or 12h)")
}

/// Parses a duration: an integer with unit s, m, h or d ("90m", "12h"); returns seconds.
///
/// # Errors
///
/// Text that is not an integer with one of those units, zero, or more seconds than fit in a `u64`.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let unit_at = text.char_indices().next_back().map_or(0, |(at, _)| at);
    let (number, unit) = text.split_at(unit_at);
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(not_a_duration(text)),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_a_duration(text));
    }
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|count| count.checked_mul(seconds_per_unit))
        .ok_or_else(|| format!("\"{text}\" is too long"))?;
    if seconds == 0 {
        return Err(format!("\"{text}\" must be greater than zero"));
    }
    Ok(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(text: &str) -> u128 {
        Quantity::parse(text).expect("valid quantity").millis()
    }

    fn error(text: &str) -> String {
        Quantity::parse(text).expect_err("invalid quantity")
    }

    #[test]
    fn plain_numbers_and_fractions() {
        assert_eq!(millis("16"), 16_000);
        assert_eq!(millis("1.5"), 1_500);
        assert_eq!(millis("0.5"), 500);
        assert_eq!(millis(".5"), 500);
        assert_eq!(millis("1."), 1_000);
        assert_eq!(millis("+2"), 2_000);
        assert_eq!(millis("007"), 7_000);
    }

    #[test]
    fn decimal_suffixes() {
        assert_eq!(millis("500m"), 500);
        assert_eq!(millis("1k"), 1_000_000);
        assert_eq!(millis("2M"), 2_000_000_000);
        assert_eq!(millis("1G"), 1_000_000_000_000);
        assert_eq!(millis("1T"), 1_000_000_000_000_000);
        assert_eq!(millis("1P"), 1_000_000_000_000_000_000);
        assert_eq!(millis("1E"), 1_000_000_000_000_000_000_000);
        assert_eq!(millis("1500u"), 2);
        assert_eq!(millis("1n"), 1);
    }

    #[test]
    fn binary_suffixes() {
        assert_eq!(millis("1Ki"), 1_024_000);
        assert_eq!(millis("500Mi"), 500 * 1_048_576_000);
        assert_eq!(millis("64Gi"), 64 * (1_u128 << 30) * 1000);
        assert_eq!(millis("1Ti"), (1_u128 << 40) * 1000);
        assert_eq!(millis("1Pi"), (1_u128 << 50) * 1000);
        assert_eq!(millis("1.5Ki"), 1_536_000);
        assert_eq!(millis("0.5Ei"), (1_u128 << 59) * 1000);
    }

    #[test]
    fn exponents() {
        assert_eq!(millis("2e3"), 2_000_000);
        assert_eq!(millis("1E3"), 1_000_000);
        assert_eq!(millis("1e+3"), 1_000_000);
        assert_eq!(millis("1e-3"), 1);
        assert_eq!(millis("1e-4"), 1);
        assert_eq!(millis("1.5e1"), 15_000);
        assert_eq!(millis("0e99999999999999999999"), 0);
        assert_eq!(millis("1e-99999999999999999999"), 1);
    }

    #[test]
    fn rounds_up_to_millis() {
        assert_eq!(millis("0.0001"), 1);
        assert_eq!(millis("1.0001"), 1_001);
        assert_eq!(millis("1.000"), 1_000);
    }

    #[test]
    fn text_is_kept_trimmed() {
        let quantity = Quantity::parse(" 64Gi ").expect("valid quantity");
        assert_eq!(quantity.as_str(), "64Gi");
        assert_eq!(quantity.to_string(), "64Gi");
        assert_eq!("1.5".parse::<Quantity>().expect("valid").as_str(), "1.5");
    }

    #[test]
    fn mebibytes_round_up() {
        let mib = |text: &str| Quantity::parse(text).expect("valid").mebibytes_ceil();
        assert_eq!(mib("20Gi"), 20_480);
        assert_eq!(mib("500Mi"), 500);
        assert_eq!(mib("1"), 1);
        assert_eq!(mib("1Mi"), 1);
        assert_eq!(mib("1048577"), 2);
        assert_eq!(mib("1G"), 954);
        assert_eq!(mib("0"), 0);
    }

    #[test]
    fn zero() {
        assert!(Quantity::parse("0").expect("valid").is_zero());
        assert!(Quantity::parse("0Gi").expect("valid").is_zero());
        assert!(Quantity::parse("-0").expect("valid").is_zero());
        assert!(!Quantity::parse("1n").expect("valid").is_zero());
    }

    #[test]
    fn malformed_quantities() {
        let examples = "(examples: 64Gi, 500Mi, 16, 500m)";
        for text in [
            "", "12GB", "1.5.2", "Gi", "1 Gi", "1e", "1e1.5", "1K", ".", "1i", "e3", "0x10",
        ] {
            assert_eq!(
                error(text),
                format!("\"{text}\" is not a Kubernetes quantity {examples}")
            );
        }
        assert_eq!(
            error("  "),
            format!("\"\" is not a Kubernetes quantity {examples}")
        );
        assert_eq!(
            error("１Gi"),
            format!("\"１Gi\" is not a Kubernetes quantity {examples}")
        );
    }

    #[test]
    fn negative_quantities() {
        assert_eq!(error("-1"), "\"-1\" must not be negative");
        assert_eq!(error("-500m"), "\"-500m\" must not be negative");
        assert_eq!(error("-1e40"), "\"-1e40\" must not be negative");
    }

    #[test]
    fn overflow_is_an_error() {
        assert_eq!(
            error("8Ei"),
            "\"8Ei\" is too large for a Kubernetes quantity"
        );
        assert_eq!(
            error("1e40"),
            "\"1e40\" is too large for a Kubernetes quantity"
        );
        assert_eq!(
            error("1e99999999999"),
            "\"1e99999999999\" is too large for a Kubernetes quantity"
        );
        let many = "1".repeat(40);
        assert_eq!(
            error(&many),
            format!("\"{many}\" has too many significant digits")
        );
        assert_eq!(millis("9223372036854775807"), MAX_MILLIS);
        assert_eq!(
            error("9223372036854775808"),
            "\"9223372036854775808\" is too large for a Kubernetes quantity"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90m"), Ok(5_400));
        assert_eq!(parse_duration("12h"), Ok(43_200));
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("3d"), Ok(259_200));
        assert_eq!(parse_duration(" 72h "), Ok(259_200));
    }

    #[test]
    fn malformed_durations() {
        let hint = "(an integer with s, m, h or d, like 90m or 12h)";
        for text in [
            "12 hours", "", "h", "1.5h", "-1h", "+1h", "12", "1w", "1H", "1hh", "१h",
        ] {
            assert_eq!(
                parse_duration(text),
                Err(format!("\"{text}\" is not a duration {hint}"))
            );
        }
    }

    #[test]
    fn duration_limits() {
        assert_eq!(
            parse_duration("0s"),
            Err("\"0s\" must be greater than zero".to_owned())
        );
        assert_eq!(
            parse_duration("000h"),
            Err("\"000h\" must be greater than zero".to_owned())
        );
        assert_eq!(
            parse_duration("213503982334602d"),
            Err("\"213503982334602d\" is too long".to_owned())
        );
        assert_eq!(
            parse_duration("99999999999999999999s"),
            Err("\"99999999999999999999s\" is too long".to_owned())
        );
    }
}
