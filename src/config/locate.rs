//! Maps a key path such as `listeners[1].tls.cert` to the line it sits on in the YAML text.
//!
//! serde_yaml reports a line for parse and type errors, but validation runs after parsing,
//! when positions are gone. A second, cheap pass over the parser's events records where every
//! key and sequence item starts, so a validation error can still say `file:line: key: ...`.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line numbers (1-based) of every key path in one YAML document.
#[derive(Debug, Default, Clone)]
pub struct KeyLines {
    lines: HashMap<String, usize>,
}

impl KeyLines {
    /// Records the key lines of `text`. A text that does not parse yields an empty map; the
    /// serde pass reports that error with its own position.
    pub fn scan(text: &str) -> Self {
        let mut recorder = Recorder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut recorder, false).is_err() {
            return KeyLines::default();
        }
        KeyLines {
            lines: recorder.lines,
        }
    }

    /// The line of `path`, or of its nearest ancestor that is written in the file (a key left
    /// to its default has no line of its own; its parent is the best place to point at).
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut current = path;
        loop {
            if let Some(line) = self.lines.get(current) {
                return Some(*line);
            }
            current = parent_path(current)?;
        }
    }
}

fn parent_path(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '['])?;
    Some(&path[..cut])
}

enum Frame {
    Map { key: Option<String> },
    Seq { index: usize },
}

#[derive(Default)]
struct Recorder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl Recorder {
    fn path(&self) -> String {
        let mut path = String::new();
        for frame in &self.stack {
            match frame {
                Frame::Map { key: Some(key) } => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                }
                Frame::Map { key: None } => {}
                Frame::Seq { index } => {
                    path.push('[');
                    path.push_str(&index.to_string());
                    path.push(']');
                }
            }
        }
        path
    }

    /// Called when a node starts: a sequence item gets its line recorded here.
    fn node_starts(&mut self, mark: Marker) {
        if let Some(Frame::Seq { .. }) = self.stack.last() {
            let path = self.path();
            self.lines.entry(path).or_insert(mark.line());
        }
    }

    /// Called when a value node is complete: the parent moves on to its next key or item.
    fn node_ends(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key }) => *key = None,
            Some(Frame::Seq { index }) => *index += 1,
            None => {}
        }
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map { key: None }) = self.stack.last() {
                    self.stack.pop();
                    self.stack.push(Frame::Map { key: Some(value) });
                    let path = self.path();
                    self.lines.entry(path).or_insert(mark.line());
                } else {
                    self.node_starts(mark);
                    self.node_ends();
                }
            }
            Event::Alias(_) => {
                self.node_starts(mark);
                self.node_ends();
            }
            Event::MappingStart(..) => {
                self.node_starts(mark);
                self.stack.push(Frame::Map { key: None });
            }
            Event::SequenceStart(..) => {
                self.node_starts(mark);
                self.stack.push(Frame::Seq { index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.node_ends();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
admin:
  address: 127.0.0.1:9901
listeners:
  - name: http
    address: 127.0.0.1:80
  - name: https
    address: 127.0.0.1:443
    tls:
      certificates:
        - names: [a.example, b.example]
          cert: a.pem
          key: a.key
";

    #[test]
    fn finds_nested_keys_and_items() {
        let lines = KeyLines::scan(TEXT);
        assert_eq!(lines.line_of("admin.address"), Some(2));
        assert_eq!(lines.line_of("listeners[0]"), Some(4));
        assert_eq!(lines.line_of("listeners[1].address"), Some(7));
        assert_eq!(
            lines.line_of("listeners[1].tls.certificates[0].cert"),
            Some(11)
        );
        assert_eq!(
            lines.line_of("listeners[1].tls.certificates[0].names[1]"),
            Some(10)
        );
    }

    #[test]
    fn falls_back_to_the_nearest_written_ancestor() {
        let lines = KeyLines::scan(TEXT);
        assert_eq!(lines.line_of("listeners[1].tls.default_name"), Some(8));
        assert_eq!(lines.line_of("core.groups"), None);
    }
}
