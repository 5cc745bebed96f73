//! Services: [`ComputeService`] (how a compute method finds its hub), [`Service`] (what
//! `#[service]` says about an `impl`: its command handlers and compute methods) and
//! [`ComputeMethod`] (a compute method as a value).

use std::future::Future;

use crate::Hub;
use crate::command::ServiceHandlers;
use crate::computed::{ComputeKey, ComputeMethodDescriptor};

/// A type whose `impl` blocks hold `#[compute_method]`s.
///
/// Compute methods cache their results in the [`Hub`] this trait returns. A hub caches one value
/// per method and argument set, so a hub should hold one instance of each service type (as a
/// dependency-injection singleton would); two instances of the same type on one hub share their
/// cache.
///
/// ```
/// use ofx_core::{ComputeService, Hub};
///
/// struct Users { hub: Hub }
///
/// impl ComputeService for Users {
///     fn hub(&self) -> &Hub { &self.hub }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is a service but does not implement `ofx_core::ComputeService`",
    label = "a service's compute methods and command handlers need to know its hub",
    note = "add `impl ofx_core::ComputeService for {Self} {{ fn hub(&self) -> &ofx_core::Hub {{ &self.hub }} }}`"
)]
pub trait ComputeService: Send + Sync + 'static {
    /// The hub that caches this service's compute methods.
    fn hub(&self) -> &Hub;
}

/// A type with a `#[service]` impl: the command handlers and compute methods of that impl.
///
/// `#[service]` implements it (for a generic `impl`, for every type argument its bounds allow);
/// [`Hub::add_service`](crate::Hub::add_service) takes a `Service` and routes its commands to
/// it on that hub.
///
/// ```
/// use std::sync::Arc;
/// use ofx_core::{compute_method, service, ComputeService, Hub, Service};
///
/// struct Users { hub: Hub }
/// impl ComputeService for Users { fn hub(&self) -> &Hub { &self.hub } }
///
/// #[service]
/// impl Users {
///     #[compute_method]
///     async fn count(&self) -> u64 { 3 }
/// }
///
/// # fn main() -> Result<(), ofx_core::Error> {
/// let hub = Hub::new()?;
/// hub.add_service(&Arc::new(Users { hub: hub.clone() }))?;
/// let names: Vec<&str> = Users::compute_methods().iter().map(|method| method.name()).collect();
/// assert!(names[0].ends_with("count"));
/// # Ok(()) }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a service: none of its `impl` blocks has `#[ofx_core::service]`",
    label = "a hub takes services whose command handlers it can route to",
    note = "put `#[ofx_core::service]` on the `impl` block of `{Self}` that holds its `#[command_handler]`s and `#[compute_method]`s"
)]
pub trait Service: ComputeService + Sized {
    /// Lists the service's command handlers: `handlers.add::<C>()` for each command `C` it
    /// handles (a [`CommandHandler<C>`](crate::CommandHandler)).
    fn handlers(handlers: &mut ServiceHandlers<Self>);

    /// The descriptors of the compute methods of the `#[service]` impl, in the order written
    /// (compute methods of the type's other `impl` blocks are not listed). Each is also a type:
    /// see [`ComputeMethod`].
    fn compute_methods() -> Vec<&'static ComputeMethodDescriptor> {
        Vec::new()
    }
}

/// What a compute method returns: it is cloned to every caller and may be shared by threads.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be returned by a compute method",
    label = "this value is cached and cloned to every caller",
    note = "compute method results must implement `Clone + Send + Sync + 'static`; wrap it in an `Arc` if it cannot be cloned"
)]
pub trait ComputeOutput: Clone + Send + Sync + 'static {}

impl<T: Clone + Send + Sync + 'static> ComputeOutput for T {}

/// A compute method as a value: `#[service]` makes a type for each `#[compute_method]` of its
/// impl (for `Todos::get`, the type `TodosGetMethod<Todos>`, made by `Todos::get_method()`).
///
/// Through it, code that is not the service's own can name one of its compute methods: call it
/// with an argument tuple, invalidate the value cached for arguments, read its
/// [descriptor](ComputeMethodDescriptor) (name, options, call counts).
///
/// ```
/// use ofx_core::{compute_method, service, ComputeMethod, ComputeService, Hub};
///
/// struct Todos { hub: Hub }
/// impl ComputeService for Todos { fn hub(&self) -> &Hub { &self.hub } }
///
/// #[service]
/// impl Todos {
///     #[compute_method]
///     pub async fn title(&self, id: u64, upper: bool) -> String {
///         let title = format!("todo {id}");
///         if upper { title.to_uppercase() } else { title }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), ofx_core::Error> {
/// let todos = Todos { hub: Hub::new()? };
/// let title = Todos::title_method();                 // a `TodosTitleMethod<Todos>`
/// assert_eq!(title.call(&todos, (1, true)).await, "TODO 1");
/// title.invalidate(&todos, &(1, true));              // as `invalidate! { todos.title(1, true); }`
/// assert_eq!(title.descriptor().calls(), 1);
/// # Ok(()) }
/// ```
pub trait ComputeMethod: Copy + Send + Sync + 'static {
    /// The service whose method it is.
    type Service: ComputeService;
    /// The method's arguments after `&self`, as a tuple (`(A,)` for one, `()` for none): its
    /// cache key.
    type Args: ComputeKey;
    /// What the method returns.
    type Output: ComputeOutput;

    /// The method's static description: its name, options and counters.
    fn descriptor(self) -> &'static ComputeMethodDescriptor;

    /// Calls the method with `args`: the cached value, or a computation, exactly as calling
    /// the method itself.
    fn call(
        self,
        service: &Self::Service,
        args: Self::Args,
    ) -> impl Future<Output = Self::Output> + Send + '_;

    /// Invalidates the value cached for `args` on the service's hub, and everything computed
    /// from it; does nothing if none is cached. The same as naming the call in `invalidate!`.
    fn invalidate(self, service: &Self::Service, args: &Self::Args) {
        crate::computed::invalidate::<Self::Service, Self::Args, Self::Output>(
            service,
            self.descriptor(),
            args,
        );
    }
}
