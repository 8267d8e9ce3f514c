"""A real browser: in JupyterLab, chapter 16's "student" button shows a trained student, not the teacher.

With no demo run present the walkthrough loads the committed student (`nbs/results/student/`). Here headless Chromium
runs the notebook, presses "teacher" and then "student", and checks that the readout under the sliders names the
student and gives a cosine in [-1, 1], and that the panel's figure changes. Skipped like `test_browser.py` (whose
JupyterLab and browser fixtures it uses) where Chromium or Playwright is missing.
"""
import re
import pytest
from test_browser import (pytestmark, lab, browser, page, ART, FIG, NOTEBOOK, _log, _settled_figure,
                          _difference, open_and_run_all)

READOUT = '.widget-html:has-text("cos to the token targets")'


def _press(page, model: str, src_before: str, shot) -> tuple[str, str]:
    "Press the model toggle `model`; wait for the figure to change; returns (readout text, figure src)."
    page.locator('.widget-toggle-buttons button', has_text=model).first.click()
    page.wait_for_function(f'(s0) => {{ const i = document.querySelector("{FIG}"); return i && i.getAttribute("src") !== s0 }}',
                           arg=src_before, timeout=120_000)
    src = _settled_figure(page, shot)
    return page.locator(READOUT).first.inner_text(), src


def test_student_button_shows_the_student(lab, page):
    errors = []
    page.on('pageerror', lambda e: errors.append(str(e)))
    _log(f'opening {NOTEBOOK} and running it')
    open_and_run_all(page, lab)
    page.locator(READOUT).first.wait_for(timeout=60_000)
    src = _settled_figure(page, ART/'student_start.png')       # the notebook's last cell left the panel on the student
    _log('pressing "teacher", then "student"')
    text_t, src_t = _press(page, 'teacher', src, ART/'panel_teacher.png')
    text_s, src_s = _press(page, 'student', src_t, ART/'panel_student.png')
    page.screenshot(path=ART/'walkthrough_student.png', full_page=True)
    _log(f'teacher readout {text_t!r}; student readout {text_s!r}')
    assert text_t.startswith('model: teacher'), text_t
    assert text_s.startswith('model: student') and 'committed' in text_s, f'the panel is not labelled as the student: {text_s!r}'
    for text in (text_t, text_s):
        cos = float(re.search(r'cos to the token targets\s+(-?[\d.]+)', text).group(1))
        assert -1 <= cos <= 1, text
    assert text_t != text_s, 'teacher and student give the same readout'
    diff = _difference(ART/'panel_teacher.png', ART/'panel_student.png')
    print(f'mean absolute pixel difference, teacher vs student panel: {diff:.2f}')
    assert src_t != src_s and diff > 0.2, f'the student panel looks like the teacher panel (difference {diff:.2f})'
    assert not errors, f'page errors: {errors}'
