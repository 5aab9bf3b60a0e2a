/**
 * ryzjupyter JupyterLab extension: a sidebar that loads, hot-swaps and profiles the models living
 * in the active notebook's kernel, over the kernel comm target `ryzjupyter`.
 */
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';

import { RyzSidebar } from './panel';

const PLUGIN_ID = 'ryzjupyter:plugin';
export const SIDEBAR_ID = 'ryzjupyter-sidebar';
const OPEN_COMMAND = 'ryzjupyter:open-sidebar';

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
<g class="jp-icon3" fill="#616161"><rect x="3" y="4" width="18" height="4" rx="1"/><rect x="3" y="10" width="18" height="4" rx="1"/>
<rect x="3" y="16" width="11" height="4" rx="1"/><circle cx="18.5" cy="18" r="2.5"/></g></svg>`;

export const ryzIcon = new LabIcon({ name: 'ryzjupyter:models', svgstr: ICON_SVG });

/** The sidebar plugin: one panel that follows the current notebook. */
const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'A sidebar to load, hot-swap, stop and profile the ryzjupyter models in the notebook kernel.',
  autoStart: true,
  requires: [INotebookTracker, ILabShell],
  optional: [ISettingRegistry, ICommandPalette],
  activate: async (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    labShell: ILabShell,
    settingRegistry: ISettingRegistry | null,
    palette: ICommandPalette | null
  ) => {
    const options = { autoImport: true, stopInterruptsAfterMs: 2000 };
    const panel = new RyzSidebar(options);
    panel.id = SIDEBAR_ID;
    panel.title.icon = ryzIcon;
    labShell.add(panel, 'left', { rank: 850 });

    tracker.currentChanged.connect((_, nb) => panel.setNotebook(nb));
    panel.setNotebook(tracker.currentWidget);

    app.commands.addCommand(OPEN_COMMAND, {
      label: 'Show ryzjupyter models',
      caption: 'Open the ryzjupyter sidebar (models in the notebook kernel)',
      execute: () => labShell.activateById(panel.id)
    });
    if (palette) {
      palette.addItem({ command: OPEN_COMMAND, category: 'ryzjupyter' });
    }
    if (settingRegistry) {
      try {
        const settings = await settingRegistry.load(PLUGIN_ID);
        const apply = () => {
          options.autoImport = settings.get('autoImport').composite as boolean;
          options.stopInterruptsAfterMs = settings.get('stopInterruptsAfterMs').composite as number;
        };
        apply();
        settings.changed.connect(apply);
      } catch (reason) {
        console.warn('ryzjupyter: could not load settings', reason);
      }
    }
    console.log('ryzjupyter sidebar is activated');
  }
};

export default plugin;
