"""SavedModel files with the same bytes on every run: function names without process counters.

TensorFlow names each traced function `__inference_<name>_<uid>`, the uid taken from a
process-wide counter, so the same graph saved twice (in one process, or after different
work in two) gets other names, and as the function library is sorted by name, another
order too. Inside functions, captured tensors become arguments named after the counter
(`<scope>_<uid>`, `_user_specified_name` "<uid>"), and pruned functions list their nodes in
no fixed order.

`canonicalize` renames every function by the rank of its uid (the counter keeps creation
order), numbered arguments by their position, sorts the library and each function's nodes
by name, and rewrites fingerprint.pb, which hashes the result (its `uuid`, random in
TensorFlow, is derived from those hashes). Loading is unaffected:
functions are called and arguments bound by position, nodes are found by name, and
TensorFlow renames functions when it loads them anyway. (Names a model gives its own nodes
from the counter, as KeyValueTensorInitializer does, are left alone: the transform graph has
none, and tests/test_preprocess.py compares its bytes.)
"""
from __future__ import annotations

import hashlib
import re
import uuid

import tensorflow as tf
from google.protobuf.descriptor import FieldDescriptor
from tensorflow.core.protobuf import fingerprint_pb2, saved_model_pb2
from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

from pipeline.artifacts import storage

_UID_NAME = re.compile(r"(.*_)(\d+)")


def _function_names(model) -> list[str]:
    return [f.signature.name for graph in model.meta_graphs for f in graph.graph_def.library.function]


def _renaming(names) -> dict[str, str]:
    """Old function name -> the name with its uid replaced by the uid's rank among all of them."""
    uids = {name: int(m.group(2)) for name in names if (m := _UID_NAME.fullmatch(name))}
    rank = {uid: i for i, uid in enumerate(sorted(set(uids.values())))}
    renamed = {name: f"{_UID_NAME.fullmatch(name).group(1)}{rank[uid]}" for name, uid in uids.items()}
    if len(set(renamed.values())) != len(renamed) or set(renamed.values()) & (set(names) - set(renamed)):
        raise RuntimeError("canonical function names would collide")  # two functions with one uid
    return renamed


def _copy(message):
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def _rename_strings(message, renamed: dict[str, str], renamed_bytes: dict[bytes, bytes]):
    """Replace every string field (map keys included) of `message` that is exactly an old name."""
    for descriptor, value in message.ListFields():
        if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
            is_message = descriptor.message_type.fields_by_name["value"].message_type is not None
            entries = [(renamed.get(key, key) if isinstance(key, str) else key, value[key]) for key in value]
            if is_message:
                entries = [(key, _copy(item)) for key, item in entries]  # the map is cleared next
            value.clear()
            for key, item in entries:
                if is_message:
                    _rename_strings(item, renamed, renamed_bytes)
                    value[key].CopyFrom(item)
                else:
                    value[key] = renamed.get(item, item) if isinstance(item, str) else item
        elif descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            for item in (value if descriptor.is_repeated else [value]):
                _rename_strings(item, renamed, renamed_bytes)
        elif descriptor.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            table = renamed if descriptor.type == FieldDescriptor.TYPE_STRING else renamed_bytes
            if descriptor.is_repeated:
                for i, item in enumerate(value):
                    if item in table:
                        value[i] = table[item]
            elif value in table:
                setattr(message, descriptor.name, table[value])


def _canonical_function(function):
    """Number the numbered arguments of a FunctionDef by position; sort its nodes by name."""
    args = function.signature.input_arg
    renamed = {arg.name: f"{m.group(1)}a{i}" for i, arg in enumerate(args) if (m := _UID_NAME.fullmatch(arg.name))}
    kept = {arg.name for arg in args} - set(renamed) | {node.name for node in function.node_def}
    if len(set(renamed.values())) != len(renamed) or set(renamed.values()) & kept:
        raise RuntimeError(f"{function.signature.name}: canonical argument names would collide")
    for i, arg in enumerate(args):
        user_name = function.arg_attr[i].attr.get("_user_specified_name") if i in function.arg_attr else None
        if user_name is not None and user_name.s.isdigit():  # a capture named by the counter
            user_name.s = renamed.get(arg.name, arg.name).encode()
        arg.name = renamed.get(arg.name, arg.name)
    for node in function.node_def:
        for i, name in enumerate(node.input):
            control = name.startswith("^")
            if name.lstrip("^") in renamed:
                node.input[i] = "^" * control + renamed[name.lstrip("^")]
    for key, value in function.ret.items():
        function.ret[key] = renamed.get(value, value)
    nodes = sorted(function.node_def, key=lambda node: node.name)
    del function.node_def[:]
    function.node_def.extend(nodes)


def canonicalize(saved_model_dir: str) -> str:
    """Rename the functions of the SavedModel in `saved_model_dir` canonically (in place) and
    rewrite its fingerprint. Returns saved_model_dir."""
    path = f"{saved_model_dir}/saved_model.pb"
    model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as handle:
        model.ParseFromString(handle.read())
    renamed = _renaming(_function_names(model))
    _rename_strings(model, renamed, {k.encode(): v.encode() for k, v in renamed.items()})
    for graph in model.meta_graphs:
        library = graph.graph_def.library
        for function in library.function:
            _canonical_function(function)
        functions = sorted(library.function, key=lambda f: f.signature.name)
        del library.function[:]
        library.function.extend(functions)
        gradients = sorted(library.gradient, key=lambda g: (g.function_name, g.gradient_func))
        del library.gradient[:]
        library.gradient.extend(gradients)
    storage.write_bytes(path, model.SerializeToString(deterministic=True))
    _write_fingerprint(saved_model_dir)
    return saved_model_dir


def _write_fingerprint(saved_model_dir):
    """fingerprint.pb as TensorFlow writes it, with a uuid derived from the hashes."""
    fingerprint = fingerprint_pb2.FingerprintDef()
    fingerprint.ParseFromString(fingerprinting.CreateFingerprintDef(saved_model_dir))
    fingerprint.ClearField("uuid")
    digest = hashlib.sha256(fingerprint.SerializeToString(deterministic=True)).digest()
    fingerprint.uuid = str(uuid.UUID(bytes=digest[:16]).int)
    storage.write_bytes(f"{saved_model_dir}/fingerprint.pb", fingerprint.SerializeToString(deterministic=True))
