"""The project's templates read as CloudFormation reads them, for the local stack.

`load(path)` parses template.yaml or member-account.yaml (short-form intrinsics
`!Ref X` become {"Ref": "X"}); `resolve(value, values, conditions)` evaluates
the intrinsics the templates use (`Ref`, `Fn::Sub`, `Fn::GetAtt`, `Fn::Join`,
`Fn::Split`, `Fn::If`, `Fn::Not`, `Fn::Equals`, `Fn::And`, `Fn::Or`, `AWS::NoValue`) as
CloudFormation does when it creates the stack. `values` maps what a `Ref` or
`${…}` names (a parameter, a pseudo parameter such as `AWS::Partition`, a
resource's logical id) and what a `GetAtt` names (`Resource.Attribute`) to its
value; a `CommaDelimitedList` parameter's value is a list.

One reader for every user: the API Gateway stand-in (scripts/gateway.py, the
functions' environment), the member accounts and the functions' roles
(scripts/local_aws.py, which the Rust harness runs as well).
"""
import yaml

NO_VALUE = object()  # AWS::NoValue: the key or list item is left out


class Intrinsic(dict):
    """A CloudFormation intrinsic function (`!Ref X` becomes {"Ref": "X"})."""


def _loader():
    class Loader(yaml.SafeLoader):
        pass

    def construct(loader, suffix, node):
        name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
            if name == "Fn::GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return Intrinsic({name: value})

    Loader.add_multi_constructor("!", construct)
    return Loader


def load(path):
    with open(path) as f:
        return yaml.load(f, Loader=_loader())


_FUNCTIONS = ("Ref", "Fn::Sub", "Fn::GetAtt", "Fn::Join", "Fn::Split", "Fn::If", "Fn::Not", "Fn::Equals", "Fn::And", "Fn::Or",
              "Condition")


def _lookup(values, name):
    if name not in values:
        raise KeyError(f"the template refers to {name!r}, which has no value here")
    return values[name]


def _sub(text, values):
    out = ""
    while "${" in text:
        start = text.index("${")
        end = text.index("}", start)
        name = text[start + 2:end]
        out += text[:start] + ("${" + name[1:] + "}" if name.startswith("!") else str(_lookup(values, name)))
        text = text[end + 1:]
    return out + text


def resolve(value, values, conditions=None):
    """`value` with every intrinsic evaluated; NO_VALUE for `AWS::NoValue` (dropped from dicts and lists)."""
    conditions = conditions or {}
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _FUNCTIONS:
        (key, arg), = value.items()
        if key == "Ref":
            return NO_VALUE if arg == "AWS::NoValue" else _lookup(values, arg)
        if key == "Fn::Sub":
            if isinstance(arg, list):
                text, extra = arg
                return _sub(text, {**values, **{k: resolve(v, values, conditions) for k, v in extra.items()}})
            return _sub(arg, values)
        if key == "Fn::GetAtt":
            resource, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
            return _lookup(values, f"{resource}.{attribute}")
        if key == "Fn::Join":
            separator, items = arg
            items = resolve(items, values, conditions)
            return separator.join(str(i) for i in (items if isinstance(items, list) else [items]))
        if key == "Fn::Split":
            separator, text = arg
            return str(resolve(text, values, conditions)).split(separator)
        if key == "Fn::If":
            name, yes, no = arg
            return resolve(yes if holds(name, values, conditions) else no, values, conditions)
        if key == "Condition":
            return holds(arg, values, conditions)
        if key == "Fn::Not":
            return resolve(arg[0], values, conditions) is not True
        if key == "Fn::And":
            return all(resolve(a, values, conditions) is True for a in arg)
        if key == "Fn::Or":
            return any(resolve(a, values, conditions) is True for a in arg)
        left, right = (resolve(a, values, conditions) for a in arg)
        return left == right
    if isinstance(value, dict):
        resolved = {k: resolve(v, values, conditions) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}
    if isinstance(value, list):
        return [v for v in (resolve(v, values, conditions) for v in value) if v is not NO_VALUE]
    return value


def holds(name, values, conditions):
    """Whether the template's condition `name` holds."""
    return resolve(conditions[name], values, conditions) is True


def parameters(template, given=None):
    """The template's parameters: their defaults, overridden by `given`; a
    `CommaDelimitedList`'s value as a list (`""` is `[""]`, as CloudFormation has it)."""
    given = given or {}
    out = {}
    for name, spec in template.get("Parameters", {}).items():
        value = given.get(name, spec.get("Default"))
        if spec.get("Type") == "CommaDelimitedList" and isinstance(value, str):
            value = value.split(",")
        out[name] = value
    return out
