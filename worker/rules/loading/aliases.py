"""YAML within a budget: no "billion laughs", no structure that contains itself, no deep nesting.

An alias shares a node, and everything downstream (plain data for validation,
the fingerprint) copies it: ten levels of ten aliases make 10**10 nodes from
600 bytes (issue 13: RSS 189 MB -> 1.65 GB in 100 s). The composer charges every
alias with the full size of what it refers to and stops at the alias that
passes `MAX_ALIAS_NODES`, with its position; an alias to a node that is still
open (`&a [*a]`) would make a cycle, so it is refused too. Nesting deeper than
`MAX_YAML_DEPTH` is refused where it starts going too deep (every later stage
walks the data recursively).
"""

from __future__ import annotations

from typing import Any

from ruamel.yaml.composer import Composer, ComposerError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode

MAX_ALIAS_NODES = 10_000  # nodes all aliases of one file may stand for, together
MAX_YAML_DEPTH = 50  # rule files nest about 8 deep


class YamlLimitError(ComposerError):
    """An alias that would pass the budget or close a cycle, or nesting too deep; with its position."""


class BudgetComposer(Composer):
    """ruamel's composer, charging each alias the size of the node it stands for."""

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self.alias_nodes = 0
        self._sizes: dict[int, int] = {}
        self._open: list[str | None] = []  # anchors of the nodes being composed, outermost first

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        if isinstance(event, AliasEvent):
            self._charge(event)
            return super().compose_node(parent, index)
        if len(self._open) >= MAX_YAML_DEPTH:
            raise YamlLimitError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
        self._open.append(event.anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open.pop()

    def _charge(self, event: AliasEvent) -> None:
        if event.anchor in self._open:
            raise YamlLimitError(
                None, None, f"alias *{event.anchor} refers to a node that contains it", event.start_mark
            )
        target = self.anchors.get(event.anchor)
        if target is None:
            return  # ruamel reports the undefined alias
        self.alias_nodes += _size(target, self._sizes)
        if self.alias_nodes > MAX_ALIAS_NODES:
            raise YamlLimitError(
                None,
                None,
                f"aliases stand for more than {MAX_ALIAS_NODES} nodes (each alias counts every node "
                "it refers to): write the data out, or share less",
                event.start_mark,
            )


def _size(node: Node, sizes: dict[int, int]) -> int:
    """Nodes in the tree `node` expands to; shared sub-nodes are sized once (`sizes`)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    if isinstance(node, MappingNode):
        total = 1 + sum(_size(k, sizes) + _size(v, sizes) for k, v in node.value)
    elif isinstance(node, SequenceNode):
        total = 1 + sum(_size(item, sizes) for item in node.value)
    else:
        total = 1
    sizes[id(node)] = total
    return total
