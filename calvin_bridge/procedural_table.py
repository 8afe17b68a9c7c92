"""The project's own play table: a URDF built from boxes that reproduces CALVIN scene D.

The kinematic tree is CALVIN's (same link and joint names, joint origins, axes and limits, in the
table's unscaled units; the scene loads it with ``globalScaling=0.8`` like the real table), so joint
ranges after scaling are: sliding door 0–0.28 m, drawer 0–0.22 m, button 0–0.02 m, switch 0–0.088 m.
The shapes are boxes placed where the real meshes have their parts (table top, legs, cabinet, drawer
with a U handle, sliding door with a handle, switch handle, button, LED, lightbulb, shelf plank).
Blocks are written as separate URDFs with CALVIN's block sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

Vec3 = tuple[float, float, float]

WOOD = (0.55, 0.38, 0.22, 1.0)
DARK = (0.15, 0.15, 0.15, 1.0)
GREY = (0.4, 0.4, 0.4, 1.0)
WHITE = (1.0, 1.0, 1.0, 1.0)

#: the procedural table's scene layout (CALVIN scene D's, from ``calvin_scene_D.yaml``); the scene reads it
#: through :func:`calvin_bridge.scene_file.procedural_layout`
GLOBAL_SCALING = 0.8
ROBOT_BASE_POSITION: Vec3 = (-0.34, -0.46, 0.24)
ROBOT_INITIAL_JOINTS: tuple[float, ...] = (
    -1.21779206, 1.03987646, 2.11978261, -2.34205014, -0.87015947, 1.64119353, 0.55344866)
#: block placement boxes ``name -> ([x, y, z] low, [x, y, z] high)`` (world m)
SURFACES: dict[str, tuple[Vec3, Vec3]] = {
    "table": ((0.0, -0.15, 0.46), (0.35, -0.03, 0.46)),
    "slider_left": ((-0.32, 0.05, 0.46), (-0.16, 0.12, 0.46)),
    "slider_right": ((-0.05, 0.05, 0.46), (0.13, 0.12, 0.46)),
}


@dataclass(frozen=True)
class Box:
    """An axis-aligned (in its own ``rpy`` frame) box: ``center`` and ``size`` in unscaled metres."""

    center: Vec3
    size: Vec3
    rpy: Vec3 = (0.0, 0.0, 0.0)
    rgba: tuple[float, float, float, float] = WOOD


def _span(lo: Vec3, hi: Vec3, rgba=WOOD) -> Box:
    """Box spanning corners ``lo``..``hi`` (unscaled metres)."""
    return Box(tuple((a + b) / 2 for a, b in zip(lo, hi)), tuple(b - a for a, b in zip(lo, hi)), rgba=rgba)


def _w(*xyz: float) -> Vec3:
    """World metres (at CALVIN's 0.8 scale) → the table's unscaled units."""
    return tuple(v / GLOBAL_SCALING for v in xyz)


def base_boxes() -> list[Box]:
    """Table body: top, legs, cabinet walls, the slanted switch panel and the button pedestal."""
    boxes = [
        _span(_w(-0.44, -0.18, 0.40), _w(0.44, 0.18, 0.44)),            # table top (surface z=0.44 m)
        _span(_w(-0.16, -0.16, 0.44), _w(-0.08, -0.08, 0.457), DARK),   # button pedestal
        _span(_w(-0.44, 0.16, 0.44), _w(0.44, 0.18, 0.648)),            # cabinet back wall
        _span(_w(-0.44, 0.09, 0.625), _w(0.44, 0.18, 0.648)),           # cabinet roof
        _span(_w(-0.44, 0.0, 0.44), _w(-0.42, 0.18, 0.648)),            # left wall
        _span(_w(0.42, 0.0, 0.44), _w(0.44, 0.18, 0.648)),              # right wall
        _span(_w(0.19, 0.05, 0.44), _w(0.21, 0.18, 0.648)),             # divider door | switch
    ]
    for sx in (-1, 1):
        for sy in (-1, 1):
            lo = _w(0.40 if sx > 0 else -0.44, 0.14 if sy > 0 else -0.18, 0.0)
            hi = _w(0.44 if sx > 0 else -0.40, 0.18 if sy > 0 else -0.14, 0.40)
            boxes.append(_span(lo, hi))
    # slanted front panel of the switch compartment (normal [0, -0.866, 0.5], like the switch frame)
    boxes.append(Box(center=(0.394, 0.112, 0.661), size=(0.26, 0.02, 0.30), rpy=(2.61799387799149, 0.0, 0.0)))
    return boxes


@dataclass(frozen=True)
class MovingLink:
    name: str
    joint: str
    joint_type: str
    origin: Vec3
    rpy: Vec3
    axis: Vec3
    upper: float
    mass: float
    boxes: tuple[Box, ...]


def moving_links() -> list[MovingLink]:
    """CALVIN's child links with their joints (origins/axes/limits as in scene D, unscaled)."""
    half_pi = 1.5707963267949
    button = MovingLink("button_link", "base__button", "prismatic", (-0.15, -0.15, 0.575), (half_pi, 0, 0),
                        (0, -1, 0), 0.025, 0.15, (Box((0, 0.015, 0), (0.07, 0.03, 0.07), rgba=DARK),))
    switch = MovingLink("switch_link", "base__switch", "prismatic", (0.375, 0.0761602540378436, 0.618612159321677),
                        (2.61799387799149, 0, 0), (0, 0, -1), 0.11, 0.24, (
                            Box((0, 0.06, -0.01), (0.15, 0.04, 0.04), rgba=GREY),        # grip bar
                            Box((-0.0625, 0.02, -0.01), (0.025, 0.04, 0.03), rgba=GREY),  # posts
                            Box((0.0625, 0.02, -0.01), (0.025, 0.04, 0.03), rgba=GREY),
                        ))
    slide = MovingLink("slide_link", "base__slide", "prismatic", (-0.125, 0.09375, 0.66908), (1.04719755119659, 0, 0),
                       (-1, 0, 0), 0.35, 1.5, (
                           Box((0.175, 0.0, 0.0125), (0.35, 0.276, 0.025)),                    # panel
                           Box((0.175, 0.0, 0.079), (0.05, 0.22, 0.042), rgba=DARK),           # handle bar
                           Box((0.175, -0.095, 0.0415), (0.05, 0.03, 0.033), rgba=DARK),       # handle posts
                           Box((0.175, 0.095, 0.0415), (0.05, 0.03, 0.033), rgba=DARK),
                       ))
    drawer = MovingLink("drawer_link", "base__drawer", "prismatic", (0.225, 0.0, 0.4), (half_pi, 0, 0),
                        (0, 0, 1), 0.275, 4.2, (
                            Box((0, 0.001, 0.075), (0.54, 0.053, 0.3)),                         # bottom
                            Box((0, 0.0375, 0.2095), (0.55, 0.125, 0.031)),                     # front panel
                            Box((0, 0.0625, -0.065), (0.54, 0.075, 0.02)),                      # back wall
                            Box((-0.262, 0.0625, 0.07), (0.025, 0.075, 0.27)),                  # side walls
                            Box((0.262, 0.0625, 0.07), (0.025, 0.075, 0.27)),
                            Box((0, 0.05, 0.3125), (0.325, 0.05, 0.025), rgba=DARK),            # handle bar
                            Box((-0.1375, 0.05, 0.2625), (0.025, 0.05, 0.075), rgba=DARK),      # handle posts
                            Box((0.1375, 0.05, 0.2625), (0.025, 0.05, 0.075), rgba=DARK),
                        ))
    led = MovingLink("led_link", "base__led", "fixed", (-0.15, 0.2, 0.809807621135331), (half_pi, 0, 0),
                     (0, 0, 0), 0.0, 0.2, (Box((0, 0.01, 0), (0.2, 0.02, 0.05), rgba=WHITE),))
    light = MovingLink("light_link", "base__light", "fixed", (0.375, 0.165, 0.80981), (1.5708, 0, 0),
                       (0, 0, 0), 0.0, 0.17, (Box((0, 0.031, -0.035), (0.062, 0.062, 0.062), rgba=WHITE),))
    plank = MovingLink("plank_link", "base__plank", "fixed", (-0.125, 0.1125, 0.525), (1.5708, 0, 0),
                       (0, 0, 0), 0.0, 2.8, (Box((0, 0.0125, 0), (0.65, 0.025, 0.175)),))
    return [button, switch, slide, drawer, led, light, plank]


def _fmt(v) -> str:
    return " ".join(f"{x:.12g}" for x in v)


def _box_xml(box: Box, idx: int) -> str:
    origin = f'<origin xyz="{_fmt(box.center)}" rpy="{_fmt(box.rpy)}"/>'
    geom = f'<geometry><box size="{_fmt(box.size)}"/></geometry>'
    return (f'<visual>{origin}{geom}<material name="m{idx}_{abs(hash(box.rgba)) % 10**6}">'
            f'<color rgba="{_fmt(box.rgba)}"/></material></visual>'
            f'<collision>{origin}{geom}</collision>')


def _inertial(mass: float) -> str:
    i = max(mass, 1e-3) * 1e-3
    return (f'<inertial><origin xyz="0 0 0" rpy="0 0 0"/><mass value="{mass:.6g}"/>'
            f'<inertia ixx="{i:.6g}" ixy="0" ixz="0" iyy="{i:.6g}" iyz="0" izz="{i:.6g}"/></inertial>')


def table_urdf() -> str:
    """URDF text of the procedural play table (unscaled; load with ``globalScaling=0.8``)."""
    parts = ['<?xml version="1.0"?>', '<robot name="procedural_playtable">', '<link name="base_link">',
             _inertial(0.0)]
    parts += [_box_xml(b, i) for i, b in enumerate(base_boxes())]
    parts.append("</link>")
    for k, link in enumerate(moving_links()):
        parts.append(f'<link name="{link.name}">{_inertial(link.mass)}')
        parts += [_box_xml(b, 100 * (k + 1) + i) for i, b in enumerate(link.boxes)]
        parts.append("</link>")
        limit = (f'<limit lower="0" upper="{link.upper:.6g}" effort="0" velocity="0"/>'
                 if link.joint_type == "prismatic" else "")
        parts.append(
            f'<joint name="{link.joint}" type="{link.joint_type}">'
            f'<origin xyz="{_fmt(link.origin)}" rpy="{_fmt(link.rpy)}"/>'
            f'<parent link="base_link"/><child link="{link.name}"/><axis xyz="{_fmt(link.axis)}"/>{limit}</joint>')
    parts.append("</robot>")
    return "\n".join(parts) + "\n"


#: CALVIN block sizes (unscaled metres) and colours, in scene_obs order.
BLOCKS: dict[str, tuple[Vec3, tuple[float, float, float, float]]] = {
    "block_red": ((0.07, 0.05, 0.05), (1.0, 0.0, 0.0, 1.0)),
    "block_blue": ((0.05, 0.05, 0.05), (0.0, 0.0, 1.0, 1.0)),
    "block_pink": ((0.10, 0.05, 0.05), (1.0, 0.0, 1.0, 1.0)),
}


def block_urdf(name: str) -> str:
    """URDF text of one block (mass 1 kg like CALVIN's, friction 0.7)."""
    if name not in BLOCKS:
        raise ValueError(f"unknown block {name!r}; known: {sorted(BLOCKS)}")
    size, rgba = BLOCKS[name]
    m = 1.0
    ixx, iyy, izz = (m / 12 * (size[1] ** 2 + size[2] ** 2), m / 12 * (size[0] ** 2 + size[2] ** 2),
                     m / 12 * (size[0] ** 2 + size[1] ** 2))
    geom = f'<geometry><box size="{_fmt(size)}"/></geometry>'
    return (f'<?xml version="1.0"?>\n<robot name="{name}"><link name="base_link">'
            f'<contact><lateral_friction value="0.7"/><spinning_friction value="0.001"/></contact>'
            f'<inertial><origin xyz="0 0 0"/><mass value="{m}"/>'
            f'<inertia ixx="{ixx:.6g}" ixy="0" ixz="0" iyy="{iyy:.6g}" iyz="0" izz="{izz:.6g}"/></inertial>'
            f'<visual>{geom}<material name="{name}"><color rgba="{_fmt(rgba)}"/></material></visual>'
            f'<collision>{geom}</collision></link></robot>\n')


def write_procedural_assets(directory: str | Path) -> dict[str, Path]:
    """Write ``table.urdf`` and one URDF per block into ``directory``; return their paths by name."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"table": directory / "procedural_table.urdf"}
    paths["table"].write_text(table_urdf())
    for name in BLOCKS:
        paths[name] = directory / f"{name}.urdf"
        paths[name].write_text(block_urdf(name))
    return paths
