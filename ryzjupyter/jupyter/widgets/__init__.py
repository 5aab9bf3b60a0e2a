"""Notebook widgets: sampling controls bound to `RyzMagics`, the live tokens/s chart, the profile
view. Importing this package does not import the engine or the C extension.

    controls_panel(magics)              -> ControlsPanel   (what `%ryz controls` shows)
    ThroughputChart(), ThroughputRecorder(chart, profiler=PROFILER), live_chart(title)
    ProfileDisplay(profile), profile_view()                (what `%ryz stats` shows)
"""

from .chart import StaticChart, ThroughputChart, ThroughputRecorder, live_chart, render_svg
from .controls import ControlsPanel, TwoWayLink, controls_panel
from .profile_view import ProfileDisplay, ProfileView, profile_html, profile_view

__all__ = ["controls_panel", "ControlsPanel", "TwoWayLink", "ThroughputChart",
           "ThroughputRecorder", "StaticChart", "live_chart", "render_svg", "ProfileDisplay",
           "ProfileView", "profile_html", "profile_view"]
