//! The Handlebars templates a renderer uses, compiled when a render first needs them.
//!
//! Compiling is the dearest part of a one-shot `ferry render` (handlebars' pest grammar is slow
//! on its input, see `compact`), and a render needs only some templates: `pytorchjob`, `jobset`
//! and `step-resource` only for a distributed step. So the embedded templates are compiled on
//! first use and kept in the registry: a server compiles each once, a `ferry render` only the
//! ones its pipeline needs. Templates read from a `--templates` directory are compiled at once,
//! so a broken override is reported up front, whether or not this pipeline needs it.
//!
//! Strict mode makes a template that names a missing field an error, and the one helper `q`
//! JSON-encodes every value, so a value can never add or remove structure.

use std::path::Path;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
};
use serde_json::Value;

use super::RenderError;
use super::compact::compacted;

/// The templates shipped in the binary, (name, text), compacted when ferry is built.
const EMBEDDED: [(&str, &str); 6] = [
    ("workflow", compacted!("workflow")),
    ("run", compacted!("run")),
    ("step-container", compacted!("step-container")),
    ("step-resource", compacted!("step-resource")),
    ("pytorchjob", compacted!("pytorchjob")),
    ("jobset", compacted!("jobset")),
];

/// A template registry that compiles embedded templates on demand.
pub(super) struct Templates {
    registry: RwLock<Handlebars<'static>>,
}

impl Templates {
    /// The embedded templates; none compiled yet.
    pub(super) fn embedded() -> Templates {
        Templates {
            registry: RwLock::new(registry()),
        }
    }

    /// The embedded templates, with every `NAME.json.hbs` in `dir` replacing its namesake,
    /// compiled now.
    pub(super) fn from_dir(dir: &Path) -> Result<Templates, RenderError> {
        let mut hb = registry();
        for (name, _) in EMBEDDED {
            let path = dir.join(format!("{name}.json.hbs"));
            match std::fs::read_to_string(&path) {
                Ok(text) => register(&mut hb, name, &text)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(RenderError::Template {
                        name: path.display().to_string(),
                        message: e.to_string(),
                    });
                }
            }
        }
        Ok(Templates {
            registry: RwLock::new(hb),
        })
    }

    /// Compiles every template not compiled yet.
    #[cfg(test)]
    pub(super) fn compile_all(&self) -> Result<(), RenderError> {
        self.compiled(&EMBEDDED.map(|(name, _)| name)).map(drop)
    }

    /// Renders template `name`, which includes the templates `partials`. The data is moved into
    /// the context: `Handlebars::render` would first copy the whole tree through serde.
    pub(super) fn render(
        &self,
        name: &str,
        partials: &[&str],
        data: Value,
    ) -> Result<String, RenderError> {
        let mut names = Vec::with_capacity(1 + partials.len());
        names.push(name);
        names.extend_from_slice(partials);
        let hb = self.compiled(&names)?;
        hb.render_with_context(name, &Context::from(data))
            .map_err(|e| RenderError::Template {
                name: name.to_owned(),
                message: e.to_string(),
            })
    }

    /// The registry, once `names` are all in it.
    fn compiled(
        &self,
        names: &[&str],
    ) -> Result<RwLockReadGuard<'_, Handlebars<'static>>, RenderError> {
        let hb = self.read();
        if names.iter().all(|name| hb.has_template(name)) {
            return Ok(hb);
        }
        drop(hb);
        {
            let mut hb = self.write();
            for name in names {
                if hb.has_template(name) {
                    continue;
                }
                let Some((_, text)) = EMBEDDED.iter().find(|(n, _)| n == name) else {
                    return Err(RenderError::Template {
                        name: (*name).to_owned(),
                        message: "no such template".to_owned(),
                    });
                };
                register(&mut hb, name, text)?;
            }
        }
        Ok(self.read())
    }

    fn read(&self) -> RwLockReadGuard<'_, Handlebars<'static>> {
        self.registry.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Handlebars<'static>> {
        self.registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Names of the compiled templates, sorted.
    #[cfg(test)]
    pub(super) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.read().get_templates().keys().cloned().collect();
        names.sort();
        names
    }
}

/// An empty registry: strict, no HTML escaping, the `q` helper.
fn registry() -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    hb.register_helper("q", Box::new(quote));
    hb
}

fn register(hb: &mut Handlebars<'static>, name: &str, text: &str) -> Result<(), RenderError> {
    hb.register_template_string(name, text)
        .map_err(|e| RenderError::Template {
            name: name.to_owned(),
            message: e.to_string(),
        })
}

/// The quoting helper: `{{q value}}` writes the value JSON-encoded.
fn quote(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let param = h
        .param(0)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex("q", 0))?;
    if param.is_value_missing() {
        let name = param.relative_path().cloned().unwrap_or_default();
        return Err(RenderErrorReason::MissingVariable(Some(name)).into());
    }
    let text = serde_json::to_string(param.value())
        .map_err(|e| RenderErrorReason::Other(e.to_string()))?;
    out.write(&text)?;
    Ok(())
}
