//! Python objects <-> JSON values. Configuration crosses the boundary as owned JSON so the
//! core never holds Python references (and the GIL can be released around it).

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

use crate::config::MAX_NESTING_DEPTH;
use crate::config::pyrepr::str_repr;
use crate::error::{Error, Issue};

fn unsupported(path: &str, what: String) -> Error {
    Error::config(Issue::at(
        if path.is_empty() { "<root>" } else { path },
        what,
    ))
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Convert a Python value (dict/list/tuple/str/int/float/bool/None) to JSON, naming the path
/// of anything that has no JSON form.
pub fn to_value(obj: &Bound<'_, PyAny>, path: &str) -> Result<Value, Error> {
    to_value_at(obj, path, 0)
}

fn to_value_at(obj: &Bound<'_, PyAny>, path: &str, depth: usize) -> Result<Value, Error> {
    if obj.is_none() {
        return Ok(Value::Null);
    }
    // bool before int: Python's bool is an int subclass.
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Value::from(u));
        }
        return Err(unsupported(path, "integer too large".into()));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Number::from_f64(f.value())
            .map(Value::Number)
            .ok_or_else(|| unsupported(path, "NaN and infinity have no JSON form".into()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return s
            .extract::<String>()
            .map(Value::String)
            .map_err(|_| unsupported(path, "string is not valid UTF-8".into()));
    }
    let container = obj.is_instance_of::<PyDict>()
        || obj.is_instance_of::<PyList>()
        || obj.is_instance_of::<PyTuple>();
    // Every walk of the value recurses (this one, resolution, even its drop): past the bound
    // a deep or self-containing dict would overflow the stack and kill the interpreter.
    if container && depth + 1 >= MAX_NESTING_DEPTH {
        return Err(unsupported(
            path,
            format!(
                "nested {MAX_NESTING_DEPTH} levels deep (or contains itself); JSON files have \
                 the same limit"
            ),
        ));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut map = Map::with_capacity(d.len());
        for (k, v) in d.iter() {
            let Ok(key) = k.extract::<String>() else {
                let shown = k.repr().map(|r| r.to_string()).unwrap_or_default();
                let why = if k.is_instance_of::<PyString>() {
                    format!("key {shown} is not valid UTF-8 (a lone surrogate)")
                } else {
                    format!("keys must be strings, got {shown}")
                };
                return Err(unsupported(path, why));
            };
            let value = to_value_at(&v, &child(path, &key), depth + 1)?;
            map.insert(key, value);
        }
        return Ok(Value::Object(map));
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for (i, item) in obj
            .try_iter()
            .map_err(|_| unsupported(path, "not iterable".into()))?
            .enumerate()
        {
            let item = item.map_err(|_| unsupported(path, "iteration failed".into()))?;
            items.push(to_value_at(&item, &format!("{path}[{i}]"), depth + 1)?);
        }
        return Ok(Value::Array(items));
    }
    let type_name = obj
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    Err(unsupported(
        path,
        format!("unsupported value of type {}", str_repr(&type_name)),
    ))
}

/// Convert JSON to fresh Python objects (never shared with the caller's input).
pub fn to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => map_to_py(py, map)?.into_any(),
    })
}

pub fn map_to_py<'py>(py: Python<'py>, map: &Map<String, Value>) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (k, v) in map {
        dict.set_item(k, to_py(py, v)?)?;
    }
    Ok(dict)
}
