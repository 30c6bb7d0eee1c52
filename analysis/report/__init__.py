"""Pictures and explanations of a partition: the static graph plot, module reports (input
attribution, top examples, output effects) and the self-contained HTML report."""

from .attribution import DirectionAttribution, direction_attribution, set_attribution
from .examples import Hit, TopExamples, decode_image, decode_text, top_examples
from .modules import ModuleInfo, ModuleReport, module_graph, module_report
from .plot import plot_graph

__all__ = ["DirectionAttribution", "Hit", "ModuleInfo", "ModuleReport", "TopExamples",
           "decode_image", "decode_text", "direction_attribution", "module_graph", "module_report",
           "plot_graph", "set_attribution", "top_examples"]
