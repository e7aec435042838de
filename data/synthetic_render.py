"""Rendering one synthetic paired frame: the scene in RGB, its thermal radiance warped into the thermal camera.

Why a module of its own: :mod:`data.synthetic` owns the dataset (arguments, layout, labels, split,
incremental extension); this owns how a frame looks (see that module's docstring for what the
two modalities show and why). Boxes are ``xyxy`` RGB pixels, continuous coordinates; frame ``i``
depends only on ``(seed, i)`` and the parameters.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from core.errors import InputError

_TEST_FRACTION = 0.3   # share of frames in the test split
_NOISE_BANK = 1 << 20  # samples of pre-drawn sensor noise, indexed per frame
_GROUND_COLOURS = ((90, 140, 110), (70, 120, 80), (120, 130, 140), (100, 110, 120), (80, 110, 140))  # BGR verges
_SHIFT = 4  # fixed-point bits for sub-pixel drawing: small objects keep their exact geometry
_FIX = float(1 << _SHIFT)


def _pt(x: float, y: float) -> tuple[int, int]:
    """Continuous coordinate -> OpenCV fixed-point pixel-index coordinate (index = continuous - 0.5)."""
    return int(round((x - 0.5) * _FIX)), int(round((y - 0.5) * _FIX))


@dataclass(frozen=True)
class _Obj:
    cls: str
    box: tuple[float, float, float, float]  # geometry box, xyxy RGB pixels (may exceed the image)
    foot: float
    rgb_visible: bool = True  # False: drawn in thermal only (see ``night_hidden_people``)


class Renderer:
    """Per-call constants (canvas geometry, noise bank); frames are rendered from ``(seed, i)``."""

    def __init__(self, seed: int, rgb_size: tuple[int, int], thermal_size: tuple[int, int], H: np.ndarray,
                 night_fraction: float, classes: Sequence[str], objects_per_image: tuple[int, int],
                 night_hidden_people: float = 0.0) -> None:
        import cv2

        from registration.warp import to_pixel_center_convention

        self.cv2 = cv2
        self.seed = seed
        self.rw, self.rh = rgb_size
        self.tw, self.th = thermal_size
        self.H = H
        self.night_fraction = night_fraction
        self.night_hidden_people = night_hidden_people
        self.classes = list(classes)
        self.opi = objects_per_image
        # Canvas: the RGB image plus whatever part of the thermal view lies outside it.
        tcorners = np.array([[0, 0, 1], [self.tw, 0, 1], [self.tw, self.th, 1], [0, self.th, 1]], dtype=np.float64)
        pre = (np.linalg.inv(H) @ tcorners.T).T
        pre = pre[:, :2] / pre[:, 2:3]
        x0 = min(0.0, float(np.floor(pre[:, 0].min())) - 2)
        y0 = min(0.0, float(np.floor(pre[:, 1].min())) - 2)
        x1 = max(float(self.rw), float(np.ceil(pre[:, 0].max())) + 2)
        y1 = max(float(self.rh), float(np.ceil(pre[:, 1].max())) + 2)
        self.ox, self.oy = int(-x0), int(-y0)
        self.cw, self.ch = int(x1 - x0), int(y1 - y0)
        if self.cw * self.ch > 9 * self.rw * self.rh:
            raise InputError("the thermal view covers far more than the RGB image (canvas > 9x the RGB area)",
                             "generate(homography=...)", "pass a homography whose thermal view overlaps the RGB image")
        # Region of RGB pixels that the thermal camera sees (objects are placed there mostly).
        self.view = (max(0.0, pre[:, 0].min()), max(0.0, pre[:, 1].min()),
                     min(float(self.rw), pre[:, 0].max()), min(float(self.rh), pre[:, 1].max()))
        shift = np.array([[1.0, 0.0, -self.ox], [0.0, 1.0, -self.oy], [0.0, 0.0, 1.0]])
        # canvas (continuous) -> RGB (continuous) is a shift by -o; then H; then the pixel-centre
        # convention that cv2.warpPerspective uses.
        self.M_thermal = to_pixel_center_convention(H @ shift)
        bank_rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
        self.bank_size = max(_NOISE_BANK, 2 * self.rw * self.rh * 3, 2 * self.tw * self.th)
        unit = bank_rng.standard_normal(self.bank_size, dtype=np.float32)
        # sensor noise sigmas (grey levels): RGB day, RGB night, thermal
        self.noise = []
        for sigma in (2.5, 5.0, 3.0):
            q = np.rint(unit * sigma)
            self.noise.append((np.clip(q, 0, 255).astype(np.uint8), np.clip(-q, 0, 255).astype(np.uint8)))
        yy, xx = np.mgrid[0:self.th, 0:self.tw].astype(np.float32)
        r2 = ((xx - self.tw / 2) / (self.tw / 2)) ** 2 + ((yy - self.th / 2) / (self.th / 2)) ** 2
        self.vignette = np.rint(255.0 * (1.0 - 0.12 * r2)).astype(np.uint8)

    def _add_noise(self, rng: np.random.Generator, img: np.ndarray, which: int) -> None:
        """Add zero-mean Gaussian noise in place (a random window of a precomputed bank; saturating)."""
        pos, neg = self.noise[which]
        n = img.size
        start = int(rng.integers(0, self.bank_size - n))
        self.cv2.add(img, pos[start:start + n].reshape(img.shape), dst=img)
        self.cv2.subtract(img, neg[start:start + n].reshape(img.shape), dst=img)

    # -- scene ---------------------------------------------------------------------------------
    def render(self, index: int) -> tuple[np.ndarray, np.ndarray, list[_Obj], bool, str]:
        """Render frame ``index``: (RGB image, thermal image, objects (geometry boxes xyxy RGB px), night, split).

        Every random draw comes from one generator seeded by ``(seed, index)`` in a fixed order, so the
        helpers below must be called in this order for the output to stay the same.
        """
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        night = bool(rng.random() < self.night_fraction)
        split = "test" if rng.random() < _TEST_FRACTION else "adapt"
        rgb = np.empty((self.ch, self.cw, 3), dtype=np.uint8)
        therm = np.empty((self.ch, self.cw), dtype=np.uint8)
        horizon = int(self.oy + self.rh * rng.uniform(0.36, 0.48))
        self._sky_and_road(rng, rgb, therm, horizon, night)
        self._buildings(rng, rgb, therm, horizon, night)
        rgb[horizon:horizon + 1] = rgb[horizon + 1:horizon + 2]
        objs = self._place(rng, horizon - self.oy, night)
        objs, lights = self._draw_objects(rng, rgb, therm, objs, night)
        rgb_img = self._rgb_camera(rng, rgb, lights, night)
        th_img = self._thermal_camera(rng, therm)
        return rgb_img, th_img, objs, night, split

    def _sky_and_road(self, rng: np.random.Generator, rgb: np.ndarray, therm: np.ndarray, horizon: int,
                      night: bool) -> None:
        """Draw the sky gradient, the ground and the road with its dashed centre line on both canvases."""
        cv2, cw, ch = self.cv2, self.cw, self.ch
        top = np.array([150, 90, 40] if not night else [40, 18, 8], dtype=np.float32)
        bot = np.array([235, 200, 170] if not night else [70, 45, 30], dtype=np.float32)
        t = np.linspace(0.0, 1.0, max(horizon, 1), dtype=np.float32)[:, None, None]
        rgb[:horizon] = (top * (1 - t) + bot * t).astype(np.uint8)
        therm[:horizon] = 45 if not night else 12
        # ground (sidewalk / verge), then the road trapezoid towards a vanishing point
        ground_rgb = list(_GROUND_COLOURS[int(rng.integers(0, len(_GROUND_COLOURS)))])
        rgb[horizon:] = ground_rgb
        therm[horizon:] = 150 if not night else 72
        vx = int(self.ox + self.rw * rng.uniform(0.35, 0.65))
        road = np.array([[vx - 4, horizon], [vx + 4, horizon], [cw + cw // 3, ch], [-cw // 3, ch]], dtype=np.int32)
        g = int(rng.integers(80, 120))
        cv2.fillPoly(rgb, [road], (g, g, g))
        cv2.fillPoly(therm, [road], 165 if not night else 84)
        for k in range(6):  # dashed centre line
            f0, f1 = (k + 0.2) / 6.0, (k + 0.55) / 6.0
            ya, yb = horizon + (ch - horizon) * f0 ** 1.6, horizon + (ch - horizon) * f1 ** 1.6
            wa, wb = 1 + 5 * f0 ** 1.6, 1 + 5 * f1 ** 1.6
            poly = np.array([[vx - wa, ya], [vx + wa, ya], [vx + wb, yb], [vx - wb, yb]], dtype=np.int32)
            cv2.fillPoly(rgb, [poly], (230, 230, 230))
            cv2.fillPoly(therm, [poly], 140 if not night else 70)

    def _buildings(self, rng: np.random.Generator, rgb: np.ndarray, therm: np.ndarray, horizon: int,
                   night: bool) -> None:
        """Draw a row of buildings (with windows) standing on the horizon, left to right across the canvas."""
        cv2 = self.cv2
        x = -int(rng.integers(0, 30))
        while x < self.cw:
            bw = int(rng.integers(30, 90))
            bh = int((horizon) * rng.uniform(0.3, 0.95))
            col = tuple(int(v) for v in rng.integers(60, 200, 3))
            cv2.rectangle(rgb, (x, horizon - bh), (x + bw - 2, horizon), col, -1)
            cv2.rectangle(therm, (x, horizon - bh), (x + bw - 2, horizon), int(rng.integers(125, 150)) if not night
                          else int(rng.integers(55, 75)), -1)
            self._windows(rng, rgb, therm, x, horizon - bh, bw, bh, night)
            x += bw

    def _draw_objects(self, rng: np.random.Generator, rgb: np.ndarray, therm: np.ndarray, objs: list[_Obj],
                      night: bool) -> tuple[list[_Obj], list[tuple[int, int, int]]]:
        """Draw objects far to near; return them (hidden people marked ``rgb_visible=False``) and car lights
        (canvas x, y, radius in px)."""
        ox, oy = self.ox, self.oy
        lights: list[tuple[int, int, int]] = []
        hidden: set[int] = set()
        for k in sorted(range(len(objs)), key=lambda k: objs[k].foot):  # far to near
            o = objs[k]
            x0, y0, x1, y1 = (o.box[0] + ox, o.box[1] + oy, o.box[2] + ox, o.box[3] + oy)
            if o.cls == "person":
                if not self._person(rng, rgb, therm, x0, y0, x1, y1, night):
                    hidden.add(k)
            else:
                lights.extend(self._car(rng, rgb, therm, x0, y0, x1, y1, night))
        return [replace(o, rgb_visible=False) if k in hidden else o for k, o in enumerate(objs)], lights

    def _rgb_camera(self, rng: np.random.Generator, rgb: np.ndarray, lights: list[tuple[int, int, int]],
                    night: bool) -> np.ndarray:
        """RGB camera: crop, exposure, night lights, blur, noise (uint8, saturating OpenCV ops: fast)."""
        cv2, ox, oy = self.cv2, self.ox, self.oy
        out = np.ascontiguousarray(rgb[oy:oy + self.rh, ox:ox + self.rw])
        if night:
            out = cv2.convertScaleAbs(out, alpha=float(rng.uniform(0.16, 0.28)))
            for _ in range(int(rng.integers(1, 4))):  # street lamps: soft warm glow
                cx, cy = int(rng.integers(0, self.rw)), int(rng.integers(0, int(self.rh * 0.5)))
                cv2.circle(out, (cx, cy), int(rng.integers(8, 16)), (40, 80, 100), -1, lineType=cv2.LINE_AA)
                cv2.circle(out, (cx, cy), int(rng.integers(2, 5)), (170, 230, 255), -1, lineType=cv2.LINE_AA)
            for (lx, ly, r) in lights:
                cv2.circle(out, (lx - ox, ly - oy), r, (200, 245, 255), -1, lineType=cv2.LINE_AA)
        else:
            out = cv2.convertScaleAbs(out, alpha=float(rng.uniform(0.85, 1.08)))
        rgb_img = cv2.GaussianBlur(out, (3, 3), 0.8 if not night else 1.0)
        self._add_noise(rng, rgb_img, 1 if night else 0)
        return rgb_img

    def _thermal_camera(self, rng: np.random.Generator, therm: np.ndarray) -> np.ndarray:
        """Thermal camera: warp the canvas through H, soft optics, vignetting, offset drift, noise."""
        cv2 = self.cv2
        t_img = cv2.warpPerspective(therm, self.M_thermal, (self.tw, self.th), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE)
        t_img = cv2.GaussianBlur(t_img, (5, 5), 1.1)
        th_img = cv2.multiply(t_img, self.vignette, scale=1.0 / 255.0)
        drift = int(rng.integers(-8, 9))
        th_img = cv2.add(th_img, drift) if drift >= 0 else cv2.subtract(th_img, -drift)
        self._add_noise(rng, th_img, 2)
        return th_img

    def _windows(self, rng: np.random.Generator, rgb: np.ndarray, therm: np.ndarray, x: int, top: int, bw: int,
                 bh: int, night: bool) -> None:
        """A grid of windows on one building (vectorised: one masked assignment per building)."""
        sx, sy = int(rng.integers(9, 15)), int(rng.integers(10, 16))
        x0, y0 = x + 4, top + 5
        nx, ny = max((bw - 10) // sx, 0), max((bh - 14) // sy, 0)
        xa, ya = max(x0, 0), max(y0, 0)
        if nx == 0 or ny == 0:
            return
        lit = rng.random((ny, nx)) < (0.35 if night else 1.0)
        mask = np.zeros((ny, sy, nx, sx), dtype=bool)
        mask[:, :6, :, :5] = lit[:, None, :, None]
        mask = mask.reshape(ny * sy, nx * sx)[ya - y0:, xa - x0:]
        h, w = min(mask.shape[0], rgb.shape[0] - ya), min(mask.shape[1], rgb.shape[1] - xa)
        if h <= 0 or w <= 0:
            return
        mask = mask[:h, :w]
        rgb[ya:ya + h, xa:xa + w][mask] = (40, 200, 250) if night else (120, 90, 60)
        therm[ya:ya + h, xa:xa + w][mask] = 80 if night else 115

    def _place(self, rng: np.random.Generator, horizon: int, night: bool) -> list[_Obj]:
        from core.boxes import iou_matrix

        lo, hi = self.opi
        n = int(rng.integers(lo, hi + 1))
        span = max(self.rh - horizon, 8)
        placed: list[_Obj] = []
        vx0, vy0, vx1, vy1 = self.view
        for _ in range(n):
            cls = self.classes[int(rng.integers(0, len(self.classes)))]
            for _try in range(6):
                # person height (px) at the chosen depth; log-uniform 10..80 px, cars 0.8x that tall
                ph = 10.0 * 8.0 ** float(rng.random()) * self.rh / 256.0
                foot = horizon + ph / (80.0 * self.rh / 256.0) * span * rng.uniform(0.85, 1.0)
                if cls == "person":
                    h, w = ph, ph * rng.uniform(0.34, 0.44)
                else:
                    h = ph * 0.8
                    w = h * (rng.uniform(1.9, 2.6) if rng.random() < 0.7 else rng.uniform(1.1, 1.3))
                if rng.random() < 0.85:
                    cx = rng.uniform(vx0 + w * 0.3, max(vx0 + w * 0.3 + 1, vx1 - w * 0.3))
                else:
                    cx = rng.uniform(0, self.rw)
                foot = min(foot, self.rh + h * 0.1)
                box = (cx - w / 2, foot - h, cx + w / 2, foot)
                if placed and iou_matrix([box], [p.box for p in placed]).max() > 0.35:
                    continue
                placed.append(_Obj(cls, box, foot))
                break
        return placed

    def _person(self, rng, rgb, therm, x0, y0, x1, y1, night) -> bool:
        """Draw one person; False when it is drawn in thermal only (invisible to the RGB camera).

        Why thermal-only people: on real night pairs (MSRS) most people are below the RGB noise yet
        hot in thermal, and the RGB labels lack them; that is what makes RGB-only pseudo-labels teach
        warm people as background. Dark clothes on a dark frame alone were not enough: the RGB teacher
        still found them (measured: the classic recipe was then *best* on night people).
        """
        cv2 = self.cv2
        h, w = y1 - y0, x1 - x0
        cx = (x0 + x1) / 2
        s, f, P = _SHIFT, _FIX, _pt

        skin = [(80, 120, 200), (60, 90, 150), (140, 170, 230), (40, 60, 100)][int(rng.integers(0, 4))]
        dark = night and rng.random() < 0.7
        # drawn only when the share is set, so night_hidden_people=0 renders the schema-1 frames unchanged
        hidden = night and self.night_hidden_people > 0 and rng.random() < self.night_hidden_people
        if hidden:
            rgb = rgb.copy()  # the RGB strokes land on a scratch copy: the RGB camera never sees this person
        shirt = tuple(int(v) for v in (rng.integers(10, 70, 3) if dark else rng.integers(20, 255, 3)))
        pants = tuple(int(v) for v in (rng.integers(10, 50, 3) if dark else rng.integers(20, 160, 3)))
        body_t = int(rng.integers(185, 215))
        head_r = 0.11 * h
        # legs
        lw = w * 0.36
        for lx in (cx - w * 0.40 + lw * 0.1, cx + w * 0.40 - lw * 1.1):
            cv2.rectangle(rgb, P(lx, y0 + 0.55 * h), P(lx + lw, y1), pants, -1, cv2.LINE_8, s)
            cv2.rectangle(therm, P(lx, y0 + 0.55 * h), P(lx + lw, y1), body_t - 15, -1, cv2.LINE_8, s)
        # torso + arms (the arms span the full box width)
        cv2.rectangle(rgb, P(cx - w * 0.36, y0 + 0.2 * h), P(cx + w * 0.36, y0 + 0.6 * h), shirt, -1, cv2.LINE_8, s)
        cv2.rectangle(therm, P(cx - w * 0.36, y0 + 0.2 * h), P(cx + w * 0.36, y0 + 0.6 * h), body_t, -1, cv2.LINE_8, s)
        for ax in (x0, x1 - w * 0.14):
            cv2.rectangle(rgb, P(ax, y0 + 0.22 * h), P(ax + w * 0.14, y0 + 0.55 * h), shirt, -1, cv2.LINE_8, s)
            cv2.rectangle(therm, P(ax, y0 + 0.22 * h), P(ax + w * 0.14, y0 + 0.55 * h), body_t + 12, -1, cv2.LINE_8, s)
        # head (hottest)
        cv2.circle(rgb, P(cx, y0 + head_r), int(round(head_r * f)), skin, -1, cv2.LINE_8, s)
        cv2.circle(therm, P(cx, y0 + head_r), int(round(head_r * f)), int(rng.integers(235, 256)), -1, cv2.LINE_8, s)
        return not hidden

    def _car(self, rng, rgb, therm, x0, y0, x1, y1, night) -> list[tuple[int, int, int]]:
        cv2 = self.cv2
        h, w = y1 - y0, x1 - x0
        s, f, P = _SHIFT, _FIX, _pt

        col = tuple(int(v) for v in rng.integers(30, 240, 3))
        facing_left = bool(rng.random() < 0.5)
        body_t = int(rng.integers(120, 150)) if not night else int(rng.integers(95, 125))
        # body
        cv2.rectangle(rgb, P(x0, y0 + 0.38 * h), P(x1, y0 + 0.85 * h), col, -1, cv2.LINE_8, s)
        cv2.rectangle(therm, P(x0, y0 + 0.38 * h), P(x1, y0 + 0.85 * h), body_t, -1, cv2.LINE_8, s)
        # engine half is hot
        ex0, ex1 = (x0, x0 + 0.35 * w) if facing_left else (x1 - 0.35 * w, x1)
        cv2.rectangle(therm, P(ex0, y0 + 0.42 * h), P(ex1, y0 + 0.8 * h), int(rng.integers(195, 225)), -1, cv2.LINE_8, s)
        # cabin with cold glass
        cab = np.array([[x0 + 0.22 * w, y0], [x1 - 0.22 * w, y0], [x1 - 0.08 * w, y0 + 0.4 * h], [x0 + 0.08 * w, y0 + 0.4 * h]])
        cab_i = np.round((cab - 0.5) * f).astype(np.int32)
        cv2.fillPoly(rgb, [cab_i], col, cv2.LINE_8, s)
        cv2.fillPoly(therm, [cab_i], body_t - 10, cv2.LINE_8, s)
        glass = np.array([[x0 + 0.26 * w, y0 + 0.07 * h], [x1 - 0.26 * w, y0 + 0.07 * h],
                          [x1 - 0.14 * w, y0 + 0.36 * h], [x0 + 0.14 * w, y0 + 0.36 * h]])
        g_i = np.round((glass - 0.5) * f).astype(np.int32)
        cv2.fillPoly(rgb, [g_i], (90, 70, 50), cv2.LINE_8, s)
        cv2.fillPoly(therm, [g_i], 60 if not night else 30, cv2.LINE_8, s)
        # wheels (hot tyres/brakes), bottom at y1
        r = 0.16 * h
        for wx in (x0 + 0.2 * w, x1 - 0.2 * w):
            cv2.circle(rgb, P(wx, y1 - r), int(round(r * f)), (25, 25, 25), -1, cv2.LINE_8, s)
            cv2.circle(therm, P(wx, y1 - r), int(round(r * f)), int(rng.integers(215, 245)), -1, cv2.LINE_8, s)
        # exhaust at the rear
        rx = x1 - 0.04 * w if facing_left else x0 + 0.04 * w
        cv2.circle(therm, P(rx, y0 + 0.78 * h), int(round(max(0.06 * h, 0.6) * f)), 250, -1, cv2.LINE_8, s)
        if night:
            hx = x0 + 0.03 * w if facing_left else x1 - 0.03 * w
            return [(int(hx), int(y0 + 0.55 * h), max(1, int(0.09 * h)))]
        return []
