//! The merchant binding of outside tools: the argument that carries the merchant is removed
//! from the schema the model sees, and filled with the session's merchant on every call.

use serde_json::{Map, Value};

use crate::merchant::MerchantId;

/// `schema` without the property `merchant_arg` (and without it in `required`), and the
/// argument's name when the schema had it. A tool whose schema lacks the argument is not
/// bound (`None`). A schema that is not an object schema is an error.
pub fn bind_schema(
    mut schema: Value,
    merchant_arg: Option<&str>,
) -> Result<(Value, Option<String>), String> {
    let Some(obj) = schema.as_object_mut() else {
        return Err("its input schema is not a JSON object".into());
    };
    match obj.get("type") {
        None => {
            obj.insert("type".into(), Value::String("object".into()));
        }
        Some(Value::String(t)) if t == "object" => {}
        Some(_) => return Err("its input schema is not {\"type\": \"object\"}".into()),
    }
    let Some(arg) = merchant_arg else {
        return Ok((schema, None));
    };
    let had = obj
        .get_mut("properties")
        .and_then(Value::as_object_mut)
        .and_then(|p| p.remove(arg))
        .is_some();
    if !had {
        return Ok((schema, None));
    }
    if let Some(Value::Array(required)) = obj.get_mut("required") {
        required.retain(|r| r.as_str() != Some(arg));
        if required.is_empty() {
            obj.remove("required");
        }
    }
    Ok((schema, Some(arg.to_string())))
}

/// Puts the session's merchant into `args` under `merchant_arg` (replacing anything there).
pub fn fill_merchant(args: &mut Map<String, Value>, merchant_arg: Option<&str>, m: &MerchantId) {
    if let Some(arg) = merchant_arg {
        args.insert(arg.to_string(), Value::String(m.as_str().to_string()));
    }
}

/// Whether `name` is a property name anywhere inside `schema` (nested objects, arrays).
pub fn names_property(schema: &Value, name: &str) -> bool {
    match schema {
        Value::Object(obj) => obj.iter().any(|(k, v)| {
            (k == "properties" && v.as_object().is_some_and(|p| p.contains_key(name)))
                || names_property(v, name)
        }),
        Value::Array(a) => a.iter().any(|v| names_property(v, name)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_merchant_argument_leaves_the_schema() {
        let schema = json!({"type": "object", "properties": {"merchant_id": {"type": "string"}, "order_id": {"type": "string"}}, "required": ["merchant_id", "order_id"], "additionalProperties": false});
        let (seen, arg) = bind_schema(schema, Some("merchant_id")).unwrap();
        assert_eq!(arg.as_deref(), Some("merchant_id"));
        assert_eq!(seen["properties"].as_object().unwrap().len(), 1);
        assert_eq!(seen["required"], json!(["order_id"]));
        let (seen, arg) =
            bind_schema(json!({"properties": {"x": {}}}), Some("merchant_id")).unwrap();
        assert!(arg.is_none());
        assert_eq!(seen["type"], "object");
        assert!(bind_schema(json!({"type": "array"}), None).is_err());
        let mut args = Map::new();
        args.insert("merchant_id".into(), json!("other"));
        fill_merchant(
            &mut args,
            Some("merchant_id"),
            &MerchantId::parse("m_1").unwrap(),
        );
        assert_eq!(args["merchant_id"], "m_1");
    }
}
