//! HTML escaping, and the page frame every dashboard page shares.
//!
//! Every value that reaches a page goes through [`Esc`] (element text and quoted attribute values
//! alike: it escapes `&`, `<`, `>`, `"` and `'`), so branch names, parameters, messages and log
//! lines are always text, never markup. Markup itself is only ever written from string literals in
//! this module and its siblings. Pages carry no inline script or style: the Content-Security-Policy
//! (see `mod.rs`) allows only `/assets/app.js` and `/assets/app.css`.

use std::fmt::{self, Display, Write as _};

/// Formats its value HTML-escaped: `write!(out, "<td>{}</td>", Esc(&branch))`.
pub struct Esc<'a, T: Display + ?Sized>(pub &'a T);

impl<T: Display + ?Sized> Display for Esc<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = EscapingWriter(f);
        write!(out, "{}", self.0)
    }
}

/// Escapes what is written through it into the formatter it wraps.
struct EscapingWriter<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for EscapingWriter<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            self.0.write_str(&rest[..i])?;
            self.0.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        self.0.write_str(rest)
    }
}

/// A query string value, percent-encoded (for links built from user-controlled values; the
/// result is escaped again where it lands in an attribute).
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A time as `2026-11-01 12:03:04 UTC` (proleptic Gregorian, from Unix milliseconds).
pub fn utc(millis: i64) -> String {
    let secs = millis.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// How long ago `then` was, seen at `now`: `12s ago`, `3m ago`, `2h ago`, `4d ago`.
pub fn ago(then: i64, now: i64) -> String {
    let secs = (now - then).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// What the frame around a page needs.
pub struct Frame<'a> {
    /// The `<title>` (plain text; escaped here).
    pub title: &'a str,
    /// The change mark the page was made at (see `live.rs`): the script refreshes the page's
    /// `#live` part when the server's mark differs.
    pub mark: &'a str,
    /// Whether a read needs a token (`dashboard_public: false`): then the header offers to sign
    /// out.
    pub private: bool,
}

/// The whole page: header with the sign-in box, then `body` (already HTML).
pub fn page(frame: &Frame<'_>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 1024);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · ferry</title>\
         <link rel=\"stylesheet\" href=\"/assets/app.css\"><link rel=\"icon\" href=\"/assets/favicon.svg\">\
         <script src=\"/assets/app.js\" defer></script></head>\
         <body data-mark=\"{}\" data-private=\"{}\">\
         <header><a class=\"brand\" href=\"/\">ferry</a><nav><a href=\"/\">runs</a></nav>\
         <form id=\"signin\" class=\"signin\" autocomplete=\"off\">\
         <span id=\"signin-state\"></span>\
         <input id=\"token\" type=\"password\" placeholder=\"API token\" aria-label=\"API token\">\
         <button type=\"submit\" id=\"signin-button\">sign in</button>\
         <button type=\"button\" id=\"signout-button\" hidden>sign out</button></form>\
         <span id=\"live-state\" class=\"live\" title=\"live updates\"></span></header>\
         <div id=\"flash\" class=\"flash\" role=\"status\" hidden></div>\n\
         <main>{body}</main></body></html>\n",
        Esc(frame.title),
        Esc(frame.mark),
        frame.private,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escape(text: &str) -> String {
        Esc(text).to_string()
    }

    #[test]
    fn every_special_character_is_escaped() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(escape("plain text, ü ✓"), "plain text, ü ✓");
        assert_eq!(escape(""), "");
        assert_eq!(
            escape("&amp;"),
            "&amp;amp;",
            "escaping is not idempotent, by design"
        );
    }

    #[test]
    fn esc_escapes_what_display_produces() {
        assert_eq!(format!("{}", Esc(&42)), "42");
        assert_eq!(
            format!("<td title=\"{}\">{}</td>", Esc("a\"b"), Esc("<b>")),
            "<td title=\"a&quot;b\">&lt;b&gt;</td>"
        );
    }

    #[test]
    fn hostile_branch_names_stay_text() {
        let branch = "exp/a\";$(reboot)#{{x}}<img src=x onerror=alert(1)>";
        let out = escape(branch);
        assert!(!out.contains('<') && !out.contains('"'), "{out}");
        assert_eq!(
            url_encode(branch),
            "exp%2Fa%22%3B%24%28reboot%29%23%7B%7Bx%7D%7D%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"
        );
    }

    #[test]
    fn times_read_as_utc_and_ages() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_793_534_584_999), "2026-11-01 12:03:04 UTC");
        assert_eq!(ago(0, 59_999), "59s ago");
        assert_eq!(ago(0, 61_000), "1m ago");
        assert_eq!(ago(0, 7_300_000), "2h ago");
        assert_eq!(ago(0, 3 * 86_400_000), "3d ago");
        assert_eq!(
            ago(5_000, 0),
            "0s ago",
            "clocks of replicas may disagree a little"
        );
    }

    #[test]
    fn the_frame_escapes_its_title_and_has_no_inline_script() {
        let html = page(
            &Frame {
                title: "</title><script>x</script>",
                mark: "1.1",
                private: true,
            },
            "<p>body</p>",
        );
        assert!(
            html.contains("<title>&lt;/title&gt;&lt;script&gt;x&lt;/script&gt; · ferry</title>")
        );
        assert_eq!(
            html.matches("<script").count(),
            1,
            "only the external script"
        );
        assert!(html.contains("<script src=\"/assets/app.js\" defer></script>"));
        assert!(!html.contains("style="), "no inline styles (CSP)");
        assert!(html.contains("<main><p>body</p></main>"));
    }
}
