"""Stage logic of rgb2thermal: plain, typed functions that the CLI, Prefect and DVC all call.

Coordinate convention used everywhere inside the package (see ``core.boxes``):
boxes are ``xyxy`` float pixels in the image's own pixel grid, continuous coordinates
with (0, 0) at the top-left corner of the top-left pixel, so a box covering pixel columns
0..9 has x1=0, x2=10. COCO JSON (``xywh``) and YOLO txt (normalised ``cx cy w h``) are
converted only at the file edges.
"""
