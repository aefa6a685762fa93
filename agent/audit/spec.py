"""The audit spec: which components a good part has and the rules they obey (YAML, validated by pydantic).

The format is described for users in docs/audit_spec.md; this is the schema that checks it.

```yaml
version: 1
background: {rgb: [0.89, 0.87, 0.82], tolerance: 0.2}   # pixels this close (RGB 0..1) are background
min_area: 0.002                                        # smaller foreground blobs are noise
components:
  - name: blue
    find: {rgb: [0.16, 0.27, 0.78], tolerance: 0.25}   # or {hsv: {h: [0.6, 0.7], s: [0.5, 1], v: [0.3, 1]}}
                                                       # or {region: [x0, y0, x1, y1]} (normalized box)
                                                       # or {clip_prompt: "a small screw"} (CLIP, --clip)
                                                       # or {sam: true, rgb: ...}: among SAM's segments
    count: 12                                          # or {min: 11, max: 13}
    colour: {rgb: [0.16, 0.27, 0.78], tolerance: 0.08}
    area: {each: 0.0064, tolerance: 0.3}               # area fraction per instance, relative tolerance
    position: {slots: [[0.125, 0.167], ...], tolerance: 0.05}   # or {box: [x0, y0, x1, y1]}
                                                       # or {relative_to: other, offset: [dx, dy], tolerance: 0.05}
pairs:
  - {a: bottle, b: label, attribute: hue, tolerance: 0.05}    # attribute of A must match B
unexpected_objects: true                               # a foreground blob no component claims is a violation
segmenter: colour                                      # or sam: candidate blobs from SAM automatic masks
                                                       # (default: sam when a component has sam: true)
sam: {model: facebook/sam-vit-base, points_per_side: 16}   # optional settings, --sam overrides the model
clip: {model: "ViT-B-16-plus-240:laion400m_e31", margin: 0.1}  # optional settings, --clip overrides the model
white_balance: true                                    # colours corrected so the image border has the background colour
dropped: []                                            # rules the draft dropped (failed on a good reference)
```

How blobs are claimed (agent.audit.check.assign): colour (`rgb`, `hsv`) first, then `clip_prompt` (the
blob's crop scored against the prompt, the other components' prompts and generic negatives; claimed
when the prompt wins by `clip.margin`), then `region`, and last a bare `sam: true` (no other way given)
takes every SAM segment nobody claimed. A component whose only way needs a model that is not here is
reported as a skipped rule, never an error.

Errors are one line naming the file and the field: `spec.yaml: components[0].count: ...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ATTRIBUTES = ("hue", "colour", "area", "x", "y", "kind")


class SpecError(ValueError):
    """A spec that cannot be read or is invalid: one line naming the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Background(_Model):
    rgb: tuple[float, float, float]
    tolerance: float = Field(0.2, gt=0)


class HsvRange(_Model):
    h: tuple[float, float] = (0.0, 1.0)
    s: tuple[float, float] = (0.0, 1.0)
    v: tuple[float, float] = (0.0, 1.0)


class Template(_Model):
    """A part found by its look (`segmenter: regions`): the pattern (a small PNG, base64) is matched by
    normalized cross-correlation around its box, in the product's frame."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the product frame (0..1)
    pattern: str = Field(min_length=8)  # base64 PNG of the mean look of the part on the references
    min_match: float = Field(0.3, ge=-1, le=1)  # correlation at or above which the part is there
    search: float = Field(0.15, gt=0, le=1)  # half-width of the search window, fraction of the product


class Find(_Model):
    rgb: tuple[float, float, float] | None = None
    tolerance: float = Field(0.25, gt=0)
    hsv: HsvRange | None = None
    region: tuple[float, float, float, float] | None = None
    clip_prompt: str | None = None
    sam: bool = False
    template: Template | None = None
    product: bool = False  # the product itself: the largest piece of foreground (segmenter: regions)

    @model_validator(mode="after")
    def _one_way(self) -> Find:
        if (
            self.rgb is None
            and self.hsv is None
            and self.region is None
            and not self.clip_prompt
            and not self.sam
            and self.template is None
            and not self.product
        ):
            raise ValueError("give one of rgb, hsv, region, clip_prompt, sam, template or product")
        if (self.template is not None or self.product) and (
            self.rgb is not None or self.hsv is not None or self.region is not None or self.clip_prompt or self.sam
        ):
            raise ValueError("template and product finders stand alone (no rgb, hsv, region, clip_prompt or sam)")
        return self

    @property
    def by_look(self) -> bool:
        """Found in the product's frame (`segmenter: regions`): by template or as the product."""
        return self.template is not None or self.product

    @property
    def by_appearance(self) -> bool:
        """Found without a model: by colour (rgb / hsv), by region, or by look (template, product)."""
        return self.rgb is not None or self.hsv is not None or self.region is not None or self.by_look

    @property
    def needs_extras(self) -> str | None:
        """The model-backed way this finder depends on (no colour or region to fall back to), or None."""
        if self.by_appearance:
            return None
        return "clip_prompt (CLIP)" if self.clip_prompt else "sam (SAM automatic masks)"


class Count(_Model):
    min: int = Field(0, ge=0)
    max: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _order(self) -> Count:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


class Colour(_Model):
    """One colour (`rgb`), or one of several kinds seen on the references (`classes`, named)."""

    rgb: tuple[float, float, float] | None = None
    classes: dict[str, tuple[float, float, float]] | None = None
    tolerance: float = Field(0.1, gt=0)

    @model_validator(mode="after")
    def _one_way(self) -> Colour:
        if (self.rgb is None) == (self.classes is None):
            raise ValueError("give either rgb or classes")
        if self.classes is not None and not self.classes:
            raise ValueError("classes must name at least one colour")
        return self


class Orientation(_Model):
    """The part's tilt in degrees (counter-clockwise), as found by its template."""

    angle: float = 0.0
    tolerance: float = Field(5.0, gt=0, le=45)


class Fill(_Model):
    """The height of the part's colour inside the product: (product bottom - top of the colour) /
    product height, e.g. how full a bottle is."""

    level: float = Field(ge=0, le=1)
    tolerance: float = Field(0.03, gt=0, le=1)


class Area(_Model):
    each: float = Field(gt=0, le=1)
    tolerance: float = Field(0.3, gt=0)  # relative: |measured / each - 1| <= tolerance


class Position(_Model):
    slots: list[tuple[float, float]] | None = None
    box: tuple[float, float, float, float] | None = None
    relative_to: str | None = None
    offset: tuple[float, float] | None = None
    tolerance: float = Field(0.05, gt=0)

    @model_validator(mode="after")
    def _one_way(self) -> Position:
        given = [self.slots is not None, self.box is not None, self.relative_to is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of slots, box or relative_to")
        if self.relative_to is not None and self.offset is None:
            raise ValueError("relative_to needs an offset [dx, dy]")
        return self


class ComponentSpec(_Model):
    name: str = Field(min_length=1)
    find: Find
    count: Count | None = None
    colour: Colour | None = None
    area: Area | None = None
    position: Position | None = None
    orientation: Orientation | None = None
    fill: Fill | None = None

    @field_validator("count", mode="before")
    @classmethod
    def _exact(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("count must be a number or {min, max}")
        if isinstance(v, int):
            return {"min": v, "max": v}
        return v


class SamSettings(_Model):
    """SAM automatic masks (`segmenter: sam`): a grid of point prompts, filtered and de-duplicated."""

    model: str | None = None  # hub id or folder; --sam overrides; default: the `sam` registry entry
    points_per_side: int = Field(16, ge=1, le=64)
    min_score: float = 0.7  # SAM's predicted IoU
    min_stability: float = Field(0.8, ge=0, le=1)
    nms_iou: float = Field(0.7, gt=0, le=1)
    max_background: float = Field(0.5, ge=0, le=1)  # masks with more background pixels are dropped


class ClipSettings(_Model):
    """The CLIP text-prompt finder: model, crop margin, negatives and the winning margin."""

    model: str | None = None  # open_clip "Arch:tag", hf-hub:..., or folder; --clip overrides
    negatives: list[str] = Field(default_factory=lambda: ["background", "an empty surface"])
    margin: float = Field(0.1, ge=0, lt=1)  # softmax probability the prompt must win by
    crop_margin: float = Field(0.25, ge=0, le=2)  # context around a blob, relative to its size


class PairRule(_Model):
    """Two parts that go together. hue / colour / area / x / y: A's attribute matches B's within the
    tolerance. kind: the combinations seen on the references (`looks`: for each colour class of B, the
    look of A seen with it; A must look most like the one of B's class)."""

    a: str
    b: str
    attribute: Literal["hue", "colour", "area", "x", "y", "kind"] = "hue"
    tolerance: float = Field(0.05, gt=0)
    looks: dict[str, str] | None = None  # kind: B's colour class -> base64 PNG of A's look with it

    @model_validator(mode="after")
    def _looks(self) -> PairRule:
        if self.attribute == "kind" and not self.looks:
            raise ValueError("a kind pair needs looks (B's colour class -> A's look)")
        return self


class RegionSettings(_Model):
    """`segmenter: regions`: how images are looked at (work size, the template search)."""

    work_size: int = Field(256, ge=64, le=2048)  # long side of the work image, pixels
    angles: list[float] = Field(default_factory=lambda: [-30.0, -20.0, -12.0, -6.0, -3.0, 0.0, 3.0, 6.0, 12.0, 20.0, 30.0])
    scales: list[float] = Field(default_factory=lambda: [0.7, 0.85, 1.0, 1.15, 1.3])


class Spec(_Model):
    version: int = 1
    background: Background
    min_area: float = Field(0.002, ge=0, lt=1)
    components: list[ComponentSpec] = Field(min_length=1)
    pairs: list[PairRule] = Field(default_factory=list)
    unexpected_objects: bool = True
    segmenter: Literal["colour", "sam", "regions"] | None = None  # None: sam when a component has `find.sam`
    frame: Literal["image", "product"] = "image"  # positions and sizes relative to the image or the product
    regions: RegionSettings | None = None
    sam: SamSettings | None = None
    clip: ClipSettings | None = None
    white_balance: bool = True  # correct colours so the image border matches the background colour
    dropped: list[str] = Field(default_factory=list)
    kept: list[str] = Field(default_factory=list)  # why each drafted rule was kept (spread, tolerance)
    # each reference's logical score under the rules drafted without it (the decision is calibrated on them)
    held_out_scores: list[float] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names(self) -> Spec:
        names = [c.name for c in self.components]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"component names must be unique; repeated: {', '.join(dup)}")
        for i, c in enumerate(self.components):
            if c.position and c.position.relative_to and c.position.relative_to not in names:
                raise ValueError(
                    f"components[{i}].position.relative_to: unknown component '{c.position.relative_to}'"
                )
        if self.segmenter == "colour":
            for i, c in enumerate(self.components):
                if c.find.sam:
                    raise ValueError(
                        f"components[{i}].find.sam: needs segmenter: sam (or leave segmenter out)"
                    )
        for i, c in enumerate(self.components):
            if c.find.by_look != (self.segmenter == "regions"):
                raise ValueError(
                    f"components[{i}].find: template and product finders go with segmenter: regions, "
                    "and segmenter: regions finds parts only by template or as the product"
                )
        for i, p in enumerate(self.pairs):
            for side in ("a", "b"):
                if getattr(p, side) not in names:
                    raise ValueError(f"pairs[{i}].{side}: unknown component '{getattr(p, side)}'")
        return self

    @property
    def uses_sam(self) -> bool:
        """Whether candidate blobs come from SAM automatic masks."""
        return self.segmenter == "sam" or (
            self.segmenter is None and any(c.find.sam for c in self.components)
        )

    @property
    def region_settings(self) -> RegionSettings:
        return self.regions or RegionSettings()

    @property
    def sam_settings(self) -> SamSettings:
        return self.sam or SamSettings()

    @property
    def clip_settings(self) -> ClipSettings:
        return self.clip or ClipSettings()

    def component(self, name: str) -> ComponentSpec:
        return next(c for c in self.components if c.name == name)

    def to_yaml(self) -> str:
        import yaml

        data = self.model_dump(mode="json", exclude_none=True)
        for comp in data["components"]:
            find = comp["find"]
            for flag in ("sam", "product"):
                if not find.get(flag):
                    find.pop(flag, None)
            if "rgb" not in find:
                find.pop("tolerance", None)
        head = "# LookTwice audit spec (the format: docs/audit_spec.md)\n"
        if self.dropped:
            head += "# dropped rules (and why):\n"
            head += "".join(f"#   - {d}\n" for d in self.dropped)
        return head + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def parse_spec(data: Any, source: str = "spec") -> Spec:
    """Validate a loaded mapping; raises SpecError('<source>: <field>: <problem>')."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the spec must be a mapping with 'background' and 'components'")
    try:
        return Spec.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        loc = tuple(
            p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))
        )
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "missing":
            msg = "required field is missing"
        return_msg = f"{source}: {_where(loc)}: {msg}"
        if msg.startswith(("components[", "pairs[")):
            return_msg = f"{source}: {msg}"
        raise SpecError(return_msg) from None


def load_spec(path: str | Path) -> Spec:
    """Read and validate a YAML spec file; raises SpecError with one clear line."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"cannot read spec file '{p}': {getattr(err, 'strerror', None) or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise SpecError(f"{p}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    return parse_spec(data, str(p))


__all__ = [
    "ATTRIBUTES",
    "Area",
    "Background",
    "ClipSettings",
    "Colour",
    "ComponentSpec",
    "Count",
    "Fill",
    "Find",
    "Orientation",
    "PairRule",
    "RegionSettings",
    "Position",
    "SamSettings",
    "Spec",
    "SpecError",
    "Template",
    "load_spec",
    "parse_spec",
]
