//! A small, blocking Chrome DevTools Protocol client for the dashboard test: it starts Debian's
//! headless Chromium, opens tabs, evaluates JavaScript in them, waits for conditions and takes
//! screenshots.
//!
//! The protocol runs over one WebSocket to the browser (`--remote-debugging-port=0`; Chromium
//! writes the port and path it chose to `DevToolsActivePort` in its profile directory), with each
//! tab attached as a flat session (`sessionId` in every message). The WebSocket part is the small
//! subset of RFC 6455 a client needs here (masked text frames out; text, continuation, ping and
//! close frames in), written out below rather than adding a crate for it: no test dependency
//! carries a WebSocket client, and this is about a hundred lines.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// Where Debian installs Chromium (`apt-get install chromium`); `FERRY_CHROMIUM` overrides.
pub fn chromium_path() -> Option<PathBuf> {
    let path = std::env::var_os("FERRY_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    path.exists().then_some(path)
}

/// A WebSocket client connection (see the module doc for the subset it speaks).
struct WebSocket {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    mask: u32,
}

impl WebSocket {
    fn connect(port: u16, path: &str) -> WebSocket {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to Chromium");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("read timeout");
        let mut writer = stream.try_clone().expect("clone");
        let key = base64::engine::general_purpose::STANDARD.encode(*b"ferry-dashboard!");
        write!(
            writer,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .expect("handshake");
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).expect("handshake answer");
        assert!(
            status.contains(" 101 "),
            "WebSocket handshake refused: {status}"
        );
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("handshake headers");
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        WebSocket {
            reader,
            writer,
            mask: 0x5eed_f00d,
        }
    }

    fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65_536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        self.mask = self.mask.rotate_left(7).wrapping_add(0x9e37_79b9);
        let mask = self.mask.to_be_bytes();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.writer.write_all(&frame).expect("send to Chromium");
    }

    fn send(&mut self, text: &str) {
        self.send_frame(0x1, text.as_bytes());
    }

    fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.reader
            .read_exact(&mut buf)
            .expect("read from Chromium (it sent nothing for 60 s, or closed)");
        buf
    }

    /// The next whole text message (answering pings on the way).
    fn recv(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let head = self.read_exact(2);
            let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
            let len = match head[1] & 0x7f {
                126 => {
                    let b = self.read_exact(2);
                    u64::from(u16::from_be_bytes([b[0], b[1]]))
                }
                127 => u64::from_be_bytes(self.read_exact(8).try_into().expect("8 bytes")),
                n => u64::from(n),
            };
            let mask = (head[1] & 0x80 != 0).then(|| self.read_exact(4));
            let mut payload = self.read_exact(usize::try_from(len).expect("frame size"));
            if let Some(mask) = mask {
                payload
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b ^= mask[i % 4]);
            }
            match opcode {
                0x0..=0x2 => {
                    message.extend_from_slice(&payload);
                    if fin {
                        return String::from_utf8(message).expect("UTF-8 from Chromium");
                    }
                }
                0x8 => panic!("Chromium closed the DevTools connection"),
                0x9 => self.send_frame(0xA, &payload),
                _ => {}
            }
        }
    }
}

/// The browser: its process, profile directory and DevTools connection.
pub struct Browser {
    child: Child,
    profile: PathBuf,
    ws: WebSocket,
    next_id: u64,
    /// Events received while waiting for answers, oldest first.
    events: VecDeque<Value>,
}

/// One tab, attached as a flat session.
#[derive(Debug, Clone)]
pub struct Tab {
    session: String,
    /// What the test calls it, for messages.
    pub name: &'static str,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    /// Starts headless Chromium with a fresh profile in `profile` and connects to it.
    pub fn launch(chromium: &Path, profile: &Path) -> Browser {
        std::fs::create_dir_all(profile).expect("profile dir");
        let child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Chromium starts");
        let file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        let (port, path) = loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Some((port, path)) = text.split_once('\n')
                && path.starts_with('/')
            {
                break (
                    port.trim().parse::<u16>().expect("port"),
                    path.trim().to_owned(),
                );
            }
            assert!(
                Instant::now() < deadline,
                "Chromium wrote no {} within 60 s",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let ws = WebSocket::connect(port, &path);
        Browser {
            child,
            profile: profile.to_path_buf(),
            ws,
            next_id: 0,
            events: VecDeque::new(),
        }
    }

    /// Sends a command (to a tab's session, or to the browser) and returns its result.
    pub fn call(
        &mut self,
        tab: Option<&Tab>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(tab) = tab {
            message["sessionId"] = json!(tab.session);
        }
        self.ws.send(&message.to_string());
        loop {
            let answer: Value = serde_json::from_str(&self.ws.recv()).expect("JSON from Chromium");
            if answer.get("id").and_then(Value::as_u64) == Some(id) {
                return match answer.get("error") {
                    Some(e) => Err(format!("{method}: {e}")),
                    None => Ok(answer["result"].clone()),
                };
            }
            if answer.get("method").is_some() {
                self.events.push_back(answer);
            }
        }
    }

    fn must(&mut self, tab: Option<&Tab>, method: &str, params: Value) -> Value {
        self.call(tab, method, params)
            .unwrap_or_else(|e| panic!("DevTools call failed: {e}"))
    }

    /// Opens a tab on `url`.
    pub fn open(&mut self, name: &'static str, url: &str) -> Tab {
        let target = self.must(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = self.must(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        let tab = Tab {
            session: attached["sessionId"]
                .as_str()
                .expect("sessionId")
                .to_owned(),
            name,
        };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            self.must(Some(&tab), domain, json!({}));
        }
        self.must(
            Some(&tab),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        );
        self.navigate(&tab, url);
        tab
    }

    /// Loads `url` in `tab` and waits until the document is complete.
    pub fn navigate(&mut self, tab: &Tab, url: &str) {
        self.must(Some(tab), "Page.navigate", json!({"url": url}));
        let expected = serde_json::to_string(url).expect("json");
        self.wait(
            tab,
            &format!("location.href === {expected} && document.readyState === 'complete'"),
            &format!("{url} loaded"),
        );
    }

    /// Evaluates `expression` in `tab` (awaiting a promise) and returns its value.
    pub fn eval(&mut self, tab: &Tab, expression: &str) -> Result<Value, String> {
        let result = self.call(
            Some(tab),
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(e) = result.get("exceptionDetails") {
            return Err(format!("{expression}: {e}"));
        }
        Ok(result["result"]["value"].clone())
    }

    /// [`Browser::eval`], failing the test on an exception.
    pub fn value(&mut self, tab: &Tab, expression: &str) -> Value {
        self.eval(tab, expression)
            .unwrap_or_else(|e| panic!("in tab {}: {e}", tab.name))
    }

    /// Waits (at most 30 s) until `condition` is true in `tab`; `what` says what is awaited.
    pub fn wait(&mut self, tab: &Tab, condition: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let last = match self.eval(tab, &format!("!!({condition})")) {
                Ok(Value::Bool(true)) => return,
                Ok(v) => v,
                // A navigation between two polls destroys the context: poll again.
                Err(e) => Value::String(e),
            };
            if Instant::now() > deadline {
                let text = self
                    .eval(
                        tab,
                        "document.body ? document.body.innerText.slice(0, 2000) : ''",
                    )
                    .unwrap_or_default();
                panic!(
                    "in tab {}: waited 30 s for {what} ({condition}); last: {last}; page text:\n{text}",
                    tab.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a PNG of the whole page in `tab`.
    pub fn screenshot(&mut self, tab: &Tab, path: &Path) {
        let shot = self.must(
            Some(tab),
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let data = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("data"))
            .expect("base64 PNG");
        std::fs::write(path, data).expect("write screenshot");
    }

    /// Problems the browser reported so far: JavaScript exceptions, console errors and
    /// Content-Security-Policy violations (`Log.entryAdded` with level `error`).
    pub fn problems(&mut self) -> Vec<String> {
        let _ = self.call(None, "Browser.getVersion", json!({}));
        self.events
            .iter()
            .filter_map(|e| match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => {
                    Some(e["params"]["exceptionDetails"].to_string())
                }
                Some("Log.entryAdded") if e["params"]["entry"]["level"] == "error" => {
                    Some(e["params"]["entry"]["text"].to_string())
                }
                Some("Runtime.consoleAPICalled") if e["params"]["type"] == "error" => {
                    Some(e["params"]["args"].to_string())
                }
                _ => None,
            })
            .collect()
    }
}
