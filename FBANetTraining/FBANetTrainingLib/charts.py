"""A live chart of a training run: Slicer table and plot nodes updated from its events.

Two tables (losses per logged iteration; validation Dice per validation) feed one plot
chart. The nodes are created at the first event that has something to show, so a run that
fails before its first iteration adds nothing to the scene.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import vtk

from fbanet.protocol import LOSS_FIELDS as LOSS_KEYS
from fbanet.protocol import Event, event_kind

LOSS_TITLES = {
    "loss": "Total loss",
    "dice_loss": "Dice loss",
    "consistency_loss": "Consistency loss",
    "contrastive_loss": "Contrastive loss",
}
COLORS = {
    "loss": (0.1, 0.1, 0.1),
    "dice_loss": (0.85, 0.33, 0.1),
    "consistency_loss": (0.0, 0.45, 0.74),
    "contrastive_loss": (0.47, 0.67, 0.19),
    "dice": (0.64, 0.08, 0.18),
}


class TrainingChart:
    """Losses and validation Dice of a run as MRML table, plot series and chart nodes."""

    def __init__(self, scene: Any, title: str = "FBANet training") -> None:
        self.scene = scene
        self.title = title
        self.chartNode: Any = None
        self.lossTable: Any = None
        self.diceTable: Any = None
        self.seriesNodes: list[Any] = []

    def _addTable(self, name: str, columns: Sequence[str]) -> Any:
        node = self.scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        for column in columns:
            array = vtk.vtkDoubleArray()
            array.SetName(column)
            node.GetTable().AddColumn(array)
        return node

    def _addSeries(self, table: Any, column: str, title: str) -> None:
        series = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{self.title}: {title}")
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("iteration")
        series.SetYColumnName(column)
        series.SetPlotType(series.PlotTypeScatter)
        series.SetMarkerStyle(
            series.MarkerStyleNone if column != "dice" else series.MarkerStyleCircle
        )
        series.SetColor(*COLORS.get(column, (0.5, 0.5, 0.5)))
        self.chartNode.AddAndObservePlotSeriesNodeID(series.GetID())
        self.seriesNodes.append(series)

    def _ensureNodes(self) -> None:
        if self.chartNode is not None and self.scene.IsNodePresent(self.chartNode):
            return
        self.chartNode = self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{self.title} chart")
        self.chartNode.SetTitle(self.title)
        self.chartNode.SetXAxisTitle("Iteration")
        self.chartNode.SetYAxisTitle("Loss / validation Dice")
        self.lossTable = self._addTable(f"{self.title} losses", ("iteration", *LOSS_KEYS))
        self.diceTable = self._addTable(f"{self.title} validation", ("iteration", "dice"))
        self.seriesNodes = []
        for key in LOSS_KEYS:
            self._addSeries(self.lossTable, key, LOSS_TITLES[key])
        self._addSeries(self.diceTable, "dice", "Validation Dice")

    @staticmethod
    def _appendRow(tableNode: Any, values: Sequence[float]) -> None:
        table = tableNode.GetTable()
        for index, value in enumerate(values):
            table.GetColumn(index).InsertNextValue(float(value))
        table.Modified()
        tableNode.Modified()

    def addEvents(self, events: Iterable[dict[str, Any]]) -> bool:
        """Add what the events of ``fbanet train --json`` report; returns whether any row was."""
        added = False
        for event in events:
            kind = event_kind(event)
            if kind is Event.ITERATION:
                self._ensureNodes()
                raw = [event.get(key) for key in LOSS_KEYS]
                values = [float("nan") if v is None else float(v) for v in raw]
                self._appendRow(self.lossTable, [float(event["iteration"]), *values])
                added = True
            elif kind is Event.VALIDATION and event.get("dice") is not None:
                self._ensureNodes()
                self._appendRow(self.diceTable, [event["iteration"], event["dice"]])
                added = True
        if added:
            self.chartNode.Modified()
        return added

    def clear(self) -> None:
        """Empty the tables (a new run; a resumed one keeps its curve)."""
        for node in (self.lossTable, self.diceTable):
            if node is not None:
                table = node.GetTable()
                for index in range(table.GetNumberOfColumns()):
                    table.GetColumn(index).SetNumberOfTuples(0)
                table.Modified()
                node.Modified()

    def rows(self, which: str = "loss") -> list[list[float]]:
        """The rows of the loss or 'dice' table, as lists (for tests)."""
        node = self.lossTable if which == "loss" else self.diceTable
        if node is None:
            return []
        table = node.GetTable()
        return [[table.GetValue(r, c).ToDouble() for c in range(table.GetNumberOfColumns())]
                for r in range(table.GetNumberOfRows())]  # fmt: skip

    def nodes(self) -> list[Any]:
        """Every node of the chart (None entries left out)."""
        return [n for n in (self.chartNode, self.lossTable, self.diceTable, *self.seriesNodes) if n]
