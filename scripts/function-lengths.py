#!/usr/bin/env python3
"""Function length check (issue 13): no function or method body in src/ over LIMIT lines (80), unless a
comment `// long-function: <why>` stands in the three lines above its signature. Prints each offender
as `lines file:line name` and exits 1 when there is one. Usage: scripts/function-lengths.py [DIR|FILE ...]
(default: src/ of this checkout). Strings and comments are blanked before braces are matched."""
import re, sys, os

def strip(src):
    out = []; i = 0; n = len(src)
    while i < n:
        c = src[i]
        if src.startswith('//', i):
            j = src.find('\n', i); j = n if j < 0 else j
            out.append(' ' * (j - i)); i = j
        elif src.startswith('/*', i):
            j = src.find('*/', i + 2); j = n if j < 0 else j + 2
            out.append(re.sub(r'[^\n]', ' ', src[i:j])); i = j
        elif c == 'R' and src.startswith('R"', i) and (i == 0 or not (src[i-1].isalnum() or src[i-1]=='_')):
            m = re.match(r'R"([^(]*)\(', src[i:])
            end = src.find(')' + m.group(1) + '"', i)
            j = end + len(m.group(1)) + 2
            out.append('""' + re.sub(r'[^\n]', ' ', src[i+2:j])); i = j
        elif c == '"' or (c == "'" and not (i > 0 and src[i-1].isalnum())):
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == '\\' else 1
            out.append(c + ' ' * (j - i - 1) + c); i = j + 1
        else:
            out.append(c); i += 1
    return ''.join(out)

CONTROL = re.compile(r'\b(if|for|while|switch|catch|do|else|try)\s*$')
def functions(path):
    src = strip(open(path, encoding='utf-8', errors='replace').read())
    stack = []  # 'scope' (namespace/class/extern) or 'other'
    res = []; last = 0
    for m in re.finditer(r'[{};]', src):
        ch = m.group(); pos = m.start()
        if ch == '{':
            head = src[last:pos].strip()
            kind = 'other'
            inside_fn = any(k[0] == 'fn' for k in stack)
            if not inside_fn:
                if re.search(r'\b(namespace|class|struct|union|enum)\b[^()]*$', head) or re.search(r'extern\s*$', head) or head.endswith('extern "C"') or re.search(r'extern\s+""$', head):
                    kind = 'scope'
                elif '(' in head and not re.search(r'=\s*$', head) and not CONTROL.search(head):
                    tail = head[head.rfind(')') + 1:]
                    if re.fullmatch(r'\s*((const|noexcept|override|final|mutable|volatile|&|&&)\s*)*(->[^{]*)?', tail) or re.match(r'\s*(const\s*)?(noexcept\s*)?:', tail) or re.search(r'\)\s*:\s*\w', head):
                        name = re.search(r'([~\w:<>]+)\s*\([^()]*(\([^()]*\)[^()]*)*\)?', head)
                        kind = 'fn'
                        stack.append(('fn', pos, head)); last = pos + 1; continue
            stack.append((kind, pos, head))
            last = pos + 1
        elif ch == '}':
            if stack:
                k = stack.pop()
                if k[0] == 'fn':
                    start = src.count('\n', 0, k[1]) + 1; end = src.count('\n', 0, pos) + 1
                    h = ' '.join(k[2].split())
                    mm = re.search(r'([~\w:]+(?:<[^<>]*>)?)\s*\(', h)
                    res.append((end - start + 1, start, mm.group(1) if mm else h[-60:]))
            last = pos + 1
        else:
            last = pos + 1
    return res

limit = int(os.environ.get('LIMIT', 80))
roots = sys.argv[1:] or [os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src')]
offenders = 0
for root in roots:
    files = [root] if os.path.isfile(root) else [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(('.cpp', '.h', '.cc'))]
    for f in sorted(files):
        lines = open(f, errors='replace').read().split('\n')
        for n, line, name in functions(f):
            if n > limit and not any('long-function:' in l for l in lines[max(0, line - 4):line - 1]):
                print(f'{n:4d} {os.path.relpath(f)}:{line} {name}')
                offenders += 1
if offenders:
    print(f'{offenders} function(s) over {limit} lines without a "// long-function: why" comment above them')
    sys.exit(1)
print(f'functions: none over {limit} lines')
