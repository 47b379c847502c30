//! The model card (`README.md` YAML front matter) of a Hugging Face checkpoint, turned into
//! `general.*` metadata the way gguf-py's `Metadata.load_model_card` and
//! `apply_metadata_heuristic` do, then `set_gguf_meta_model` writes it.
//!
//! Read: the front matter is the lines between a first line `---` and the next `---`.
//! Written (when present): `general.license` (a list joined by ","), `license.name`,
//! `license.link`, `general.author` (`author`, `model_author`, `model_creator`),
//! `version`, `organization`, `description`, `source.url` / `doi` / `uuid` / `repo_url`,
//! `general.tags` (`tags`, then `pipeline_tag` appended), `general.languages` (`languages`,
//! then `language`), `general.base_model.*` (`base_model` / `base_models` /
//! `base_model_sources`) and `general.dataset.*` (`datasets` / `dataset` / `dataset_sources`),
//! an entry given as a Hugging Face id `org/name` becoming its name and organization in title
//! case, its version and its repository URL, as `get_model_id_components` parses it.
//!
//! A known difference: gguf-py parses with PyYAML (YAML 1.1, where `yes`/`on` are booleans and
//! dates are dates); this reads YAML 1.2. Values that are not strings are skipped where gguf-py
//! would write a string.

use anyhow::{Context, Result};
use jq::gguf::{GgufWriter, MetaValue};
use regex::Regex;
use std::path::Path;
use yaml_rust2::{Yaml, YamlLoader};

/// The front matter of `dir/README.md` as a YAML mapping (None without a card or front matter).
pub fn load(dir: &Path) -> Result<Option<Yaml>> {
    let p = dir.join("README.md");
    if !p.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let mut lines = text.lines();
    if lines.next() != Some("---") {
        return Ok(None);
    }
    let mut yaml = String::new();
    for l in lines {
        if l == "---" {
            break;
        }
        yaml.push_str(l);
        yaml.push('\n');
    }
    // gguf-py: tabs become two spaces (some cards indent with tabs).
    let yaml = yaml.replace('\t', "  ");
    let docs = YamlLoader::load_from_str(&yaml)
        .with_context(|| format!("{}: the YAML front matter does not parse", p.display()))?;
    Ok(docs.into_iter().next().filter(|d| d.as_hash().is_some()))
}

fn get<'a>(card: &'a Yaml, key: &str) -> Option<&'a Yaml> {
    card.as_hash()?.get(&Yaml::String(key.to_string()))
}

/// The first of `keys` that the card has, as a string.
pub fn first_str(card: &Yaml, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| get(card, k))
        .and_then(|v| v.as_str().map(str::to_string))
}

/// Strings of a value that may be one string or a list of them.
fn strings(v: Option<&Yaml>) -> Vec<String> {
    match v {
        Some(Yaml::String(s)) => vec![s.clone()],
        Some(Yaml::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// Python's `str.islower()`: some cased character, and no upper-case one.
fn py_islower(s: &str) -> bool {
    s.chars().any(char::is_lowercase) && !s.chars().any(char::is_uppercase)
}

/// Python's `str.title()`: a cased character after an uncased one is upper-cased, the others
/// lower-cased.
fn py_title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_cased = false;
    for c in s.chars() {
        let cased = c.is_lowercase() || c.is_uppercase();
        if cased && !prev_cased {
            out.extend(c.to_uppercase());
        } else if cased {
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
        prev_cased = cased;
    }
    out
}

/// gguf-py's `id_to_title`.
pub fn id_to_title(s: &str) -> String {
    let keep = Regex::new(r"^(v\d+(?:\.\d+)*|\d.*)$").expect("valid regex");
    s.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            if py_islower(w) && !keep.is_match(w) {
                py_title(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What `get_model_id_components` returns: full name, organization, basename, finetune,
/// version, size label.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IdParts {
    pub name: Option<String>,
    pub org: Option<String>,
    pub basename: Option<String>,
    pub finetune: Option<String>,
    pub version: Option<String>,
    pub size_label: Option<String>,
}

/// gguf-py's `Metadata.get_model_id_components`, rule for rule.
pub fn model_id_components(model_id: &str, total_params: i64) -> IdParts {
    if model_id.contains(' ') {
        return IdParts {
            name: Some(model_id.to_string()),
            ..IdParts::default()
        };
    }
    let (mut org, full) = match model_id.split_once('/') {
        Some((o, n)) => (Some(o.to_string()), n.to_string()),
        None => (None, model_id.to_string()),
    };
    if org.as_deref().is_some_and(|o| o.starts_with('.')) {
        org = None;
    }
    let mut parts: Vec<String> = full
        .split('-')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    #[derive(Default, Clone)]
    struct T {
        basename: bool,
        size: bool,
        finetune: bool,
        version: bool,
        ty: bool,
    }
    impl T {
        fn n(&self) -> usize {
            [
                self.basename,
                self.size,
                self.finetune,
                self.version,
                self.ty,
            ]
            .iter()
            .filter(|&&b| b)
            .count()
        }
    }
    let re_version = Regex::new(r"(?i)^(v|iter)?\d+([.]\d+)*$").expect("valid regex");
    let re_type = Regex::new(r"(?i)^(i?q\d(_\w)*|b?fp?(16|32))$").expect("valid regex");
    let re_size =
        Regex::new(r"(?i)^(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)$")
            .expect("valid regex");
    let re_finetune = Regex::new(r"(?i)^(chat|instruct|vision|lora)$").expect("valid regex");
    let mut types = vec![T::default(); parts.len()];
    for i in 0..parts.len() {
        let part = parts[i].clone();
        if re_version.is_match(&part) {
            types[i].version = true;
        } else if re_type.is_match(&part) {
            types[i].ty = true;
            parts[i] = part.to_uppercase();
        } else if i > 0 && re_size.is_match(&part) {
            let mut p: Vec<char> = part.replace('_', ".").chars().collect();
            if p.last().is_some_and(|c| c.is_ascii_digit()) && p.len() >= 2 {
                // bloom-7b1 -> 7.1b
                let n = p.len();
                let (a, b) = (p[n - 2], p[n - 1]);
                p.truncate(n - 2);
                p.push('.');
                p.push(b);
                p.push(a);
            }
            let n = p.len();
            if n > 1 && p[n - 2].is_ascii_digit() && "kmbt".contains(p[n - 1]) {
                p[n - 1] = p[n - 1].to_ascii_uppercase();
            }
            let mut s: String = p.iter().collect();
            if total_params != 0 {
                let (num, unit) = s.split_at(s.len() - s.chars().last().map_or(0, char::len_utf8));
                if let (Ok(x), Some(k)) = (num.parse::<f64>(), " KMBT".find(unit)) {
                    let label = x * 1000f64.powi(k as i32);
                    let tp = total_params as f64;
                    let small = total_params < 0 && label < (total_params.abs() / 8) as f64;
                    let far =
                        total_params > 0 && (label - tp).abs() > (7 * total_params / 8) as f64;
                    if small || far {
                        types[i].finetune = true;
                        s = format!("{num}{}", unit.to_lowercase());
                    }
                }
            }
            if types[i].n() == 0 {
                types[i].size = true;
            }
            parts[i] = s;
        } else if i > 0 && re_finetune.is_match(&part) {
            if total_params < 0 && part.eq_ignore_ascii_case("lora") {
                types[i].ty = true;
            } else {
                types[i].finetune = true;
            }
        }
    }
    let has_numeric_size = parts
        .iter()
        .zip(&types)
        .any(|(p, t)| t.size && p.chars().any(|c| c.is_ascii_digit()));
    if has_numeric_size {
        for (p, t) in parts.iter().zip(types.iter_mut()) {
            if t.size && p.chars().all(char::is_alphabetic) {
                t.size = false;
            }
        }
    }
    let mut at_start = true;
    for (p, t) in parts.iter().zip(types.iter_mut()) {
        let alpha_first = p.chars().next().is_some_and(char::is_alphabetic);
        if at_start && ((t.n() == 0 && alpha_first) || t.version) {
            t.basename = true;
        } else {
            at_start = false;
            if t.n() == 0 {
                t.finetune = true;
            }
        }
    }
    for t in types.iter_mut().rev() {
        if t.basename && t.n() > 1 {
            t.basename = false;
        } else {
            break;
        }
    }
    let join = |f: &dyn Fn(&T) -> bool| {
        let v: Vec<&str> = parts
            .iter()
            .zip(&types)
            .filter(|(_, t)| f(t))
            .map(|(p, _)| p.as_str())
            .collect();
        (!v.is_empty()).then(|| v.join("-"))
    };
    let mut basename = join(&|t| t.basename);
    let mut sizes: Vec<&str> = Vec::new();
    for (p, t) in parts.iter().zip(&types) {
        if t.size && !sizes.contains(&p.as_str()) {
            sizes.push(p);
        }
    }
    let size_label = (!sizes.is_empty()).then(|| sizes.join("-"));
    let finetune = join(&|t| t.finetune);
    let version = join(&|t| t.version && !t.basename);
    if size_label.is_none() && finetune.is_none() && version.is_none() {
        basename = None;
    }
    IdParts {
        name: Some(full),
        org,
        basename,
        finetune,
        version,
        size_label,
    }
}

/// One `general.base_model.N.*` / `general.dataset.N.*` entry from a card value.
fn source_entry(v: &Yaml, total_params: i64) -> Vec<(&'static str, String)> {
    let mut e = Vec::new();
    match v {
        Yaml::String(id) => {
            let is_url = ["http://", "https://", "ssh://"]
                .iter()
                .any(|p| id.starts_with(p));
            let parsed = if is_url {
                e.push(("repo_url", id.clone()));
                let re =
                    Regex::new(r"^https?://huggingface.co/([^/]+/[^/]+)$").expect("valid regex");
                if id.contains("huggingface.co") {
                    re.captures(id)
                        .map(|c| model_id_components(&c[1], total_params))
                } else {
                    None
                }
            } else {
                Some(model_id_components(id, total_params))
            };
            if let Some(c) = parsed {
                if let Some(n) = &c.name {
                    e.push(("name", id_to_title(n)));
                }
                if let Some(o) = &c.org {
                    e.push(("organization", id_to_title(o)));
                }
                if let Some(v) = &c.version {
                    e.push(("version", v.clone()));
                }
                if !is_url {
                    if let (Some(o), Some(n)) = (&c.org, &c.name) {
                        e.push(("repo_url", format!("https://huggingface.co/{o}/{n}")));
                    }
                }
            }
        }
        Yaml::Hash(h) => {
            for (k, v) in h {
                if let (Some(k), Some(v)) = (k.as_str(), v.as_str()) {
                    if let Some(key) = SOURCE_KEYS.iter().find(|s| **s == k) {
                        e.push((*key, v.to_string()));
                    }
                }
            }
        }
        _ => {}
    }
    // set_gguf_meta_model writes them in this order.
    e.sort_by_key(|(k, _)| SOURCE_KEYS.iter().position(|s| s == k));
    e
}

const SOURCE_KEYS: [&str; 9] = [
    "name",
    "author",
    "version",
    "organization",
    "description",
    "url",
    "doi",
    "uuid",
    "repo_url",
];

/// The list entries of the first present key (a single value counts as one entry).
fn entries<'a>(card: &'a Yaml, keys: &[&str]) -> Option<Vec<&'a Yaml>> {
    let v = keys.iter().find_map(|k| get(card, k))?;
    Some(match v {
        Yaml::Array(a) => a.iter().collect(),
        Yaml::Null | Yaml::BadValue => Vec::new(),
        one => vec![one],
    })
}

/// Writes the card's metadata but the name-like keys (name, organization, basename,
/// finetune, version, size label: [`Names`] settles them and the caller writes them).
/// `total_params` is the model's parameter count (for the size heuristics of base-model ids).
pub fn write(w: &mut GgufWriter, card: &Yaml, total_params: i64) -> Result<()> {
    let s = |keys: &[&str]| first_str(card, keys);
    for (key, keys) in [
        (
            "general.author",
            &["author", "model_author", "model_creator"][..],
        ),
        ("general.description", &["description", "model_description"]),
    ] {
        if let Some(v) = s(keys) {
            w.add(key, v.as_str())?;
        }
    }
    match get(card, "license") {
        Some(Yaml::String(l)) => w.add("general.license", l.as_str())?,
        Some(Yaml::Array(a)) => {
            let v: Vec<&str> = a.iter().filter_map(Yaml::as_str).collect();
            w.add("general.license", v.join(",").as_str())?;
        }
        _ => {}
    }
    for (key, k) in [
        ("general.license.name", "license_name"),
        ("general.license.link", "license_link"),
    ] {
        if let Some(v) = s(&[k]) {
            w.add(key, v.as_str())?;
        }
    }
    for (key, keys) in [
        ("general.source.url", &["url", "model_url"][..]),
        ("general.source.doi", &["doi", "model_doi"]),
        ("general.source.uuid", &["uuid", "model_uuid"]),
        ("general.source.repo_url", &["repo_url", "model_repo_url"]),
    ] {
        if let Some(v) = s(keys) {
            w.add(key, v.as_str())?;
        }
    }
    for (prefix, count, keys) in [
        (
            "general.base_model",
            "general.base_model.count",
            &["base_model", "base_models", "base_model_sources"][..],
        ),
        (
            "general.dataset",
            "general.dataset.count",
            &["datasets", "dataset", "dataset_sources"],
        ),
    ] {
        if let Some(list) = entries(card, keys) {
            w.add(count, list.len() as u32)?;
            for (i, v) in list.iter().enumerate() {
                for (k, val) in source_entry(v, total_params) {
                    w.add(format!("{prefix}.{i}.{k}"), val.as_str())?;
                }
            }
        }
    }
    // use_array_model_card_metadata: appended in this order, written when a key has a value.
    for (key, keys) in [
        ("general.tags", ["tags", "pipeline_tag"]),
        ("general.languages", ["languages", "language"]),
    ] {
        let present = keys
            .iter()
            .any(|k| get(card, k).is_some_and(|v| !v.is_null()));
        if present {
            let v: Vec<String> = keys.iter().flat_map(|k| strings(get(card, k))).collect();
            w.add(key, MetaValue::strings(v))?;
        }
    }
    Ok(())
}

/// The model's `general.name`, `organization`, `basename`, `finetune`, `version` and
/// `size_label` as gguf-py's `Metadata.load` + convert_hf_to_gguf.py's `prepare_metadata` settle
/// them: the card's own keys first; then, for what is still unset, config.json's
/// `_name_or_path` when it is a model id (at most one '/'), then the directory's name, both
/// through `get_model_id_components` (name and organization in title case); then the directory
/// name as it is for the name, and the parameter count's label for the size.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Names {
    pub name: Option<String>,
    pub organization: Option<String>,
    pub basename: Option<String>,
    pub finetune: Option<String>,
    pub version: Option<String>,
    pub size_label: Option<String>,
}

impl Names {
    /// `dir_name` is the checkpoint directory's last component ("" for none, as Python's
    /// `Path.name`); `size_from_params` the label of the parameter count.
    pub fn settle(
        card: Option<&Yaml>,
        name_or_path: Option<&str>,
        dir_name: &str,
        total_params: i64,
        size_from_params: impl FnOnce() -> String,
    ) -> Names {
        let cs = |keys: &[&str]| card.and_then(|c| first_str(c, keys));
        let mut n = Names {
            name: cs(&["name", "model_name"]),
            organization: cs(&["organization", "model_organization"]),
            basename: cs(&["basename", "model_basename", "model_type"]),
            finetune: cs(&["finetune", "model_finetune"]),
            version: cs(&["version", "model_version"]),
            size_label: cs(&["size_label", "model_size_label"]),
        };
        let ids = name_or_path
            .filter(|id| id.matches('/').count() <= 1)
            .into_iter()
            .chain(std::iter::once(dir_name));
        for id in ids {
            let p = model_id_components(id, total_params);
            let fill = |slot: &mut Option<String>, v: Option<String>| {
                if slot.is_none() {
                    *slot = v;
                }
            };
            fill(&mut n.name, p.name.as_deref().map(id_to_title));
            fill(&mut n.organization, p.org.as_deref().map(id_to_title));
            fill(&mut n.basename, p.basename);
            fill(&mut n.finetune, p.finetune);
            fill(&mut n.version, p.version);
            fill(&mut n.size_label, p.size_label);
        }
        if n.name.is_none() {
            n.name = Some(dir_name.to_string());
        }
        if n.size_label.is_none() && total_params > 0 {
            n.size_label = Some(size_from_params());
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_as_gguf_py() {
        let c = model_id_components("google/gemma-3-270m-pt", 268_098_176);
        assert_eq!(c.name.as_deref(), Some("gemma-3-270m-pt"));
        assert_eq!(c.org.as_deref(), Some("google"));
        assert_eq!(c.basename.as_deref(), Some("gemma-3"));
        assert_eq!(c.size_label.as_deref(), Some("270M"));
        assert_eq!(c.finetune.as_deref(), Some("pt"));
        assert_eq!(c.version, None);
        assert_eq!(id_to_title("gemma-3-270m-pt"), "Gemma 3 270m Pt");
        let c = model_id_components("mistralai/Mistral-7B-Instruct-v0.2", 7_000_000_000);
        assert_eq!(
            (
                c.basename.as_deref(),
                c.size_label.as_deref(),
                c.finetune.as_deref(),
                c.version.as_deref()
            ),
            (Some("Mistral"), Some("7B"), Some("Instruct"), Some("v0.2"))
        );
        let c = model_id_components("bigscience/bloom-7b1", 0);
        assert_eq!(c.size_label.as_deref(), Some("7.1B"));
        assert_eq!(
            model_id_components("a model", 0).name.as_deref(),
            Some("a model")
        );
    }
}
