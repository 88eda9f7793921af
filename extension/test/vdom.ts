/** Reading a virtual DOM tree as a person reads the page: its text, and its elements
 * by class, without a browser. */
import { VirtualElement, VirtualNode } from '@lumino/virtualdom';

/** The text a person sees in a node, as the browser's textContent has it. */
export function text(node: VirtualNode | null): string {
  if (node === null) {
    return '';
  }
  if (node.type === 'text') {
    return node.content;
  }
  return node.children.map(text).join('');
}

/** Every element under (and including) `node`, depth first. */
export function elements(node: VirtualNode): VirtualElement[] {
  if (node.type === 'text') {
    return [];
  }
  const own = node.type === 'element' ? [node as VirtualElement] : [];
  return [...own, ...node.children.flatMap(elements)];
}

/** The elements with this class, depth first. */
export function byClass(node: VirtualNode, name: string): VirtualElement[] {
  return elements(node).filter(e => (e.attrs.className ?? '').split(' ').includes(name));
}

/** The one element with this class; throws when there is none or more than one. */
export function one(node: VirtualNode, name: string): VirtualElement {
  const found = byClass(node, name);
  if (found.length !== 1) {
    throw new Error(`${found.length} elements of class ${name}`);
  }
  return found[0];
}

/** Whether a button would be disabled in the browser. */
export function disabled(button: VirtualElement): boolean {
  return 'disabled' in button.attrs;
}

/** Click an element: call its onclick as the browser would. */
export function click(node: VirtualElement): void {
  const handler = node.attrs.onclick as ((ev: MouseEvent) => unknown) | undefined;
  if (!handler) {
    throw new Error(`<${node.tag} class="${node.attrs.className}"> has no onclick`);
  }
  handler.call(undefined as unknown as HTMLElement, {} as MouseEvent);
}
